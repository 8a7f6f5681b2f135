"""Turn `launcher bench` results into numbers a person can compare: derived rows, a rich table,
REPORT.md, report.json and three PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import matplotlib
import numpy as np
from rich.markup import escape
from rich.table import Table

matplotlib.use("Agg")  # bench runs on headless nodes: never reach for a display
import matplotlib.pyplot as plt

IDENTITY = ("name", "runner", "strategy", "precision", "world_size", "micro_batch", "global_batch")
NUMBERS = ("samples_per_s", "tokens_per_s", "padded_tokens_per_s", "padding_share",
           "model_tflops_per_s", "mfu", "hfu", "step_p50_ms", "step_p95_ms", "data_wait_share",
           "peak_memory_gib")
COLUMNS = ("configuration", "samples/s", "tokens/s (real)", "padded tokens/s", "MFU",
           "step p50 ms", "step p95 ms", "data wait", "peak memory", "vs HF Trainer")
BASELINE = "hf-trainer"
GIB = 2 ** 30


def _div(a: float, b: float) -> float | None:
    # An empty or zero denominator means "not measured", which a report shows as '-', not a crash.
    return a / b if b else None


def derive(result: dict, peak_tflops_per_device: float | None) -> dict:
    """Derived numbers of one result (see the module's NUMBERS); all None for a failed one."""
    row: dict[str, Any] = {k: result.get(k) for k in IDENTITY}
    row["error"] = result.get("error")
    if row["error"] is not None:
        return row | dict.fromkeys(NUMBERS)
    wall, times = result["wall_s"], result["step_times_s"]
    real, padded = result["real_tokens"], result["padded_tokens"]
    # Flop counts are summed over ranks, so the peak they are measured against is all GPUs'.
    peak_flops = (peak_tflops_per_device * 1e12 * result["world_size"]
                  if peak_tflops_per_device else 0.0)
    memory = result.get("peak_memory_bytes")
    return row | {
        "samples_per_s": _div(result["samples"], wall),
        "tokens_per_s": _div(real, wall),
        "padded_tokens_per_s": _div(padded, wall),
        "padding_share": None if not padded else 1.0 - real / padded,
        "model_tflops_per_s": _div(result["model_flops"], wall * 1e12),
        "mfu": _div(result["model_flops"], wall * peak_flops),
        "hfu": _div(result["hardware_flops"], wall * peak_flops),
        "step_p50_ms": float(np.percentile(times, 50)) * 1e3 if times else None,
        "step_p95_ms": float(np.percentile(times, 95)) * 1e3 if times else None,
        "data_wait_share": _div(sum(result["data_wait_s"]), sum(times)),
        "peak_memory_gib": None if memory is None else memory / GIB,
    }


def compare(rows: list[dict]) -> list[dict]:
    """Add "vs_baseline": samples/s over the HF Trainer row with the same micro batch and world
    size (its own strategy's row when there is one, so ZeRO-3 is set against ZeRO-3)."""
    baselines = [r for r in rows if r["runner"] == BASELINE and r["samples_per_s"]]
    out = []
    for r in rows:
        same = [b for b in baselines
                if (b["micro_batch"], b["world_size"]) == (r["micro_batch"], r["world_size"])]
        same.sort(key=lambda b: b["strategy"] != r["strategy"])
        base = same[0]["samples_per_s"] if same else None
        ratio = None if base is None or r["samples_per_s"] is None else r["samples_per_s"] / base
        out.append(r | {"vs_baseline": ratio})
    return out


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _cells(row: dict) -> list[str]:
    """The numeric columns of COLUMNS as text, shared by the terminal table and REPORT.md."""
    if row.get("error") is not None:
        return ["-"] * (len(COLUMNS) - 1)
    return [_fmt(row["samples_per_s"], ",.1f"), _fmt(row["tokens_per_s"], ",.0f"),
            _fmt(row["padded_tokens_per_s"], ",.0f"), _fmt(row["mfu"], ".1%"),
            _fmt(row["step_p50_ms"], ",.1f"), _fmt(row["step_p95_ms"], ",.1f"),
            _fmt(row["data_wait_share"], ".1%"), _fmt(row["peak_memory_gib"], ".1f", " GiB"),
            _fmt(row.get("vs_baseline"), ".2f", "x")]


def table(rows: list[dict], title: str) -> Table:
    out = Table(title=title, title_justify="left")
    for col in COLUMNS:
        out.add_column(col, justify="left" if col == "configuration" else "right")
    for r in rows:
        # Names and errors are text, not rich markup ('[rank0]' in a traceback would vanish).
        config = escape(str(r["name"]))
        if r.get("error") is not None:
            config += f"\n[red]failed: {escape(str(r['error']))}[/]"
        out.add_row(config, *_cells(r))
    return out


def _md(text: Any) -> str:
    # A '|' or a newline inside a cell would break the markdown table's row.
    return " ".join(str(text).split()).replace("|", "\\|")


def _markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    # Text in the first column reads left to right; numbers line up on the right.
    return ["| " + " | ".join(header) + " |", "|---|" + "--:|" * (len(header) - 1),
            *("| " + " | ".join(cells) + " |" for cells in body)]


def _common(results: list[dict], key: str) -> str:
    """One value shared by every configuration that ran, else a pointer to report.json."""
    values = [r.get(key) for r in results if r.get("error") is None]
    if not values:
        return "-"
    if all(v == values[0] for v in values):
        return str(values[0])
    return "varies by configuration (see report.json)"


def _markdown(results: list[dict], rows: list[dict], meta: dict) -> str:
    peak = meta.get("peak_tflops")
    peak_text = (f"the peak used is {peak:,g} TFLOP/s per GPU ({meta['precision']}, dense)"
                 if peak else "no peak known for this device: MFU not computed")
    body = []
    for r in rows:
        config = _md(r["name"])
        if r.get("error") is not None:
            config += f" — **failed:** {_md(r['error'])}"
        body.append([config, *_cells(r)])
    versions = [[_md(k), _md(v)] for k, v in meta.get("versions", {}).items()]
    lines = [
        f"# Benchmark of {meta['recipe']} ({meta['date']})", "",
        "Training throughput of the recipe's model and data shape, this launcher beside the "
        "Hugging Face Trainer. Each configuration ran as its own job.", "",
        "## Setup", "",
        f"- Device: {meta['device']}",
        f"- World size: {meta['world_size']} process(es)",
        f"- Precision: {meta['precision']}",
        f"- Sequence lengths: {meta['length_model']}",
        f"- Truncation length: {_common(results, 'max_length')}; padding: "
        f"{_common(results, 'padding')}",
        f"- Steps per configuration: {_common(results, 'warmup_steps')} warm-up, then "
        f"{_common(results, 'steps')} timed",
        "", "Command:", "", "```", meta["command"], "```", "",
        *_markdown_table(["package", "version"], versions), "",
        "## Results", "",
        *_markdown_table(list(COLUMNS), body), "",
        "![throughput](throughput.png)", "",
        "![step times](step_times.png)", "",
        "![memory](memory.png)", "",
        "## How the numbers are computed", "",
        "- **samples/s** = rows trained in the timed steps / wall time of the timed steps "
        "(warm-up steps excluded).",
        "- **tokens/s (real)** counts non-pad tokens only; **padded tokens/s** counts every "
        "token the GPU computed, padding included.",
        f"- **FLOPs** of a batch: {meta['formula']}.",
        "- **MFU** = model FLOPs counted on real tokens, per second / (datasheet dense peak x "
        "GPUs); HFU is the same counted on padded tokens (HFU, padding share and model TFLOP/s "
        f"are in report.json). Here {peak_text}.",
        "- **step p50 / p95**: median and 95th percentile of the per-step wall times after "
        "warm-up (linear interpolation).",
        "- **data wait**: share of step time the training loop spent waiting for its batches.",
        "- **peak memory**: torch.cuda.max_memory_allocated, the maximum over ranks "
        "('-' on CPU).",
        "- **vs HF Trainer**: samples/s over that of the HF Trainer run with the same micro "
        "batch and world size (and the same strategy, when HF Trainer ran it).",
    ]
    if meta.get("notes"):
        lines += ["", "## Notes", "", *(f"- {n}" for n in meta["notes"])]
    return "\n".join(lines) + "\n"


def _message_figure(path: Path, message: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bars(path: Path, rows: list[dict], key: str, xlabel: str,
          label: Callable[[float], str]) -> None:
    """Horizontal bars (configuration names are long), one per row, in the table's order."""
    names = [str(r["name"]) for r in rows]
    values = [r[key] or 0.0 for r in rows]
    colors = ["tab:gray" if r["runner"] == BASELINE else "tab:blue" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(rows)))
    ax.barh(names, values, color=colors)
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        if r[key] is not None:
            text = label(r[key])
        else:
            text = "failed" if r.get("error") is not None else "-"
        ax.annotate(f" {text}", (values[i], i), va="center", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_title(f"{xlabel} per configuration (gray: HF Trainer)", fontsize=10)
    ax.margins(x=0.2)  # room for the value written after the longest bar
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _step_histogram(path: Path, results: list[dict]) -> None:
    series = {str(r["name"]): np.asarray(r["step_times_s"]) * 1e3 for r in results
              if r.get("error") is None and r.get("step_times_s")}
    if not series:
        _message_figure(path, "no timed steps (every configuration failed)")
        return
    # Shared bins, so the series' shapes are comparable at a glance.
    bins = np.histogram_bin_edges(np.concatenate(list(series.values())), bins=30)
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, ms in series.items():
        ax.hist(ms, bins=bins, histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel("step time (ms)")
    ax.set_ylabel("steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out_dir: Path, results: list[dict], meta: dict) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = compare([derive(r, meta.get("peak_tflops")) for r in results])
    (out_dir / "report.json").write_text(
        json.dumps({"meta": meta, "results": results, "rows": rows}, indent=2) + "\n")
    (out_dir / "REPORT.md").write_text(_markdown(results, rows, meta))
    _bars(out_dir / "throughput.png", rows, "samples_per_s", "samples/s", lambda v: f"{v:,.1f}")
    if all(r["peak_memory_gib"] is None for r in rows):
        _message_figure(out_dir / "memory.png", "no GPU memory measured (CPU run)")
    else:
        _bars(out_dir / "memory.png", rows, "peak_memory_gib", "peak memory (GiB)",
              lambda v: f"{v:.1f} GiB")
    _step_histogram(out_dir / "step_times.png", results)
    return rows
