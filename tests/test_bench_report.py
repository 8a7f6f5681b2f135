"""launcher.bench.report on fabricated results whose numbers can be checked on paper."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from launcher.engine.flops import FORMULA
from launcher.bench.report import COLUMNS, compare, derive, table, write_report

approx = pytest.approx
GIB = 2 ** 30
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def result(**overrides) -> dict:
    # 5 timed steps of 32 rows: 160 rows in 2.0 s -> 80 samples/s.
    base = {
        "name": "launcher ddp bf16 b32", "runner": "launcher", "strategy": "ddp",
        "precision": "bf16", "world_size": 1, "micro_batch": 32, "grad_accum": 1,
        "global_batch": 32, "max_length": 128, "padding": "dynamic, to the batch's longest",
        "warmup_steps": 3, "steps": 5,
        "step_times_s": [0.1, 0.2, 0.3, 0.4, 1.0], "data_wait_s": [0.02, 0.02, 0.02, 0.02, 0.12],
        "wall_s": 2.0, "samples": 160, "real_tokens": 16_000, "padded_tokens": 20_480,
        "model_flops": 2e14, "hardware_flops": 2.5e14,
        "peak_memory_bytes": int(12.5 * GIB), "peak_reserved_bytes": 14 * GIB,
        "device": "NVIDIA H100 80GB HBM3", "error": None,
    }
    return base | overrides


def results() -> list[dict]:
    return [
        result(),
        result(name="hf-trainer ddp bf16 b32", runner="hf-trainer", step_times_s=[0.8] * 5,
               data_wait_s=[0.0] * 5, wall_s=4.0, peak_memory_bytes=20 * GIB),
        {"name": "launcher zero3 bf16 b64", "runner": "launcher", "strategy": "zero3",
         "precision": "bf16", "world_size": 1, "micro_batch": 64, "global_batch": 64,
         "error": OOM},
    ]


def meta(**overrides) -> dict:
    base = {
        "date": "2025-01-31T12:00:00", "device": "NVIDIA H100 80GB HBM3", "precision": "bf16",
        "peak_tflops": 1000.0, "world_size": 1, "versions": {"torch": "2.5.1",
                                                              "transformers": "4.47.0"},
        "recipe": "recipes/tiny_news.py",
        "command": "python -m launcher bench recipes/tiny_news.py --batches 32,64",
        "length_model": "lengths drawn from the recipe's training split",
        "formula": FORMULA, "notes": ["HF Trainer ran with its default dataloader."],
    }
    return base | overrides


def markdown_row(report: str, name: str) -> dict[str, str]:
    """The Results table's row for a configuration, as column -> cell text."""
    line = next(ln for ln in report.splitlines() if ln.startswith(f"| {name}"))
    return dict(zip(COLUMNS, (c.strip() for c in line.strip("|").split(" | "))))


# --------------------------------------------------------------------------- numbers

def test_derive_hand_computed():
    row = derive(result(), peak_tflops_per_device=1000.0)
    assert row["samples_per_s"] == approx(80.0)                  # 160 rows / 2 s
    assert row["tokens_per_s"] == approx(8_000.0)                # 16,000 / 2 s
    assert row["padded_tokens_per_s"] == approx(10_240.0)        # 20,480 / 2 s
    assert row["padding_share"] == approx(0.21875)               # 1 - 16,000 / 20,480
    assert row["model_tflops_per_s"] == approx(100.0)            # 2e14 / 2 s / 1e12
    assert row["mfu"] == approx(0.1)                             # 100 / 1000
    assert row["hfu"] == approx(0.125)                           # 125 / 1000
    assert row["step_p50_ms"] == approx(300.0)
    assert row["step_p95_ms"] == approx(880.0)                   # 0.4 + 0.8 x (1.0 - 0.4)
    assert row["data_wait_share"] == approx(0.1)                 # 0.2 s of 2.0 s
    assert row["peak_memory_gib"] == approx(12.5)
    assert row["error"] is None
    assert {k: row[k] for k in ("name", "runner", "micro_batch", "world_size")} == {
        "name": "launcher ddp bf16 b32", "runner": "launcher", "micro_batch": 32,
        "world_size": 1}


def test_mfu_is_against_every_gpu_and_absent_without_a_peak():
    # The same summed FLOPs on 2 GPUs is half the utilisation of each.
    assert derive(result(world_size=2), 1000.0)["mfu"] == approx(0.05)
    row = derive(result(peak_memory_bytes=None), None)
    assert row["mfu"] is None and row["hfu"] is None and row["peak_memory_gib"] is None
    assert row["model_tflops_per_s"] == approx(100.0)            # does not need a peak


def test_step_percentiles_match_numpy():
    rng = random.Random(0)
    times = [rng.uniform(0.05, 0.5) for _ in range(37)]
    row = derive(result(step_times_s=times, data_wait_s=[0.0] * 37), None)
    assert row["step_p50_ms"] == approx(np.percentile(times, 50) * 1e3)
    assert row["step_p95_ms"] == approx(np.percentile(times, 95) * 1e3)


def test_error_row_keeps_identity_and_has_no_numbers():
    row = derive(results()[2], 1000.0)
    assert row["error"] == OOM and row["name"] == "launcher zero3 bf16 b64"
    assert row["micro_batch"] == 64 and row["strategy"] == "zero3"
    assert row["samples_per_s"] is None and row["mfu"] is None and row["step_p95_ms"] is None


def test_vs_baseline_is_against_hf_trainer_with_the_same_batch_and_world():
    rows = compare([derive(r, 1000.0) for r in results()]
                   + [derive(result(name="launcher ddp b16", micro_batch=16), 1000.0)])
    by_name = {r["name"]: r["vs_baseline"] for r in rows}
    assert by_name == {"launcher ddp bf16 b32": approx(2.0),   # 80 / 40 samples/s
                       "hf-trainer ddp bf16 b32": 1.0,
                       "launcher zero3 bf16 b64": None,       # failed
                       "launcher ddp b16": None}              # no HF Trainer at b16


# --------------------------------------------------------------------------- what a person sees

def test_terminal_table_formats_numbers_for_people():
    rows = compare([derive(r, 1000.0) for r in results()])
    console = Console(record=True, width=250)
    console.print(table(rows, "bench"))
    text = console.export_text()
    for column in COLUMNS:
        assert column in text
    launcher_line = next(ln for ln in text.splitlines() if "launcher ddp bf16 b32" in ln)
    for cell in ("80.0", "8,000", "10,240", "10.0%", "300.0", "880.0", "12.5 GiB", "2.00x"):
        assert cell in launcher_line
    assert "1.00x" in next(ln for ln in text.splitlines() if "hf-trainer ddp" in ln)
    assert "failed: " + OOM in text


def test_write_report_gpu(tmp_path: Path):
    rows = write_report(tmp_path, results(), meta())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "REPORT.md", "memory.png", "report.json", "step_times.png", "throughput.png"]
    for png in ("throughput.png", "step_times.png", "memory.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, png

    report = (tmp_path / "REPORT.md").read_text()
    assert report.startswith("# Benchmark of recipes/tiny_news.py (2025-01-31T12:00:00)")
    assert FORMULA in report
    assert meta()["command"] in report and "| torch | 2.5.1 |" in report
    assert "1,000 TFLOP/s per GPU" in report
    for name in ("launcher ddp bf16 b32", "hf-trainer ddp bf16 b32", "launcher zero3 bf16 b64"):
        assert f"| {name}" in report
    assert OOM in report
    for png in ("throughput", "step_times", "memory"):
        assert f"({png}.png)" in report
    assert "- HF Trainer ran with its default dataloader." in report
    assert markdown_row(report, "launcher ddp bf16 b32") == dict(zip(COLUMNS, [
        "launcher ddp bf16 b32", "80.0", "8,000", "10,240", "10.0%", "300.0", "880.0",
        "10.0%", "12.5 GiB", "2.00x"]))

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == {"meta": meta(), "results": results(), "rows": rows}


def test_write_report_cpu_has_no_mfu_and_still_a_memory_plot(tmp_path: Path):
    cpu = [r | {"peak_memory_bytes": None, "peak_reserved_bytes": None, "device": "x86_64"}
           for r in results()[:2]]
    write_report(tmp_path, cpu, meta(device="x86_64", peak_tflops=None, notes=[]))
    report = (tmp_path / "REPORT.md").read_text()
    row = markdown_row(report, "launcher ddp bf16 b32")
    assert row["MFU"] == "-" and row["peak memory"] == "-" and row["samples/s"] == "80.0"
    assert "no peak known for this device: MFU not computed" in report
    assert "## Notes" not in report
    assert (tmp_path / "memory.png").read_bytes()[:4] == b"\x89PNG"
