"""`python -m launcher bench R.py`: warm up, time N steps of every configuration, report.

A configuration is (runner, strategy, micro batch). Ours runs through the same plan and
`launch.sh` as `launcher run`, with the plan's `bench` field telling the engine to time its own
loop and train nothing else (no eval, checkpoint or export); HF Trainer runs under the same
torchrun world on the same model directory, rows and batch (`hf_trainer.py`). Each
configuration is its own torchrun job, one after another, so peak memory is its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

from rich.console import Console

from launcher import plan as plan_mod
from launcher.bench import report, synthetic
from launcher.engine import flops
from launcher.errors import RecipeError
from launcher.executors.local import local_env, threads_per_rank
from launcher.recipe.load import LoadedRecipe, apply_overrides
from launcher.recipe.schema import COMPILE_MODES, STRATEGIES
from launcher.recipe.validate import validate

BASELINES = {"hf-trainer": "best", "hf-trainer-tutorial": "tutorial"}


@dataclasses.dataclass(frozen=True)
class Config:
    runner: str            # "launcher" or "hf-trainer"
    strategy: str
    micro_batch: int
    settings: str = ""     # HF Trainer: "best" or "tutorial"
    packed: bool = False   # ours with data.packing
    compile: str = "off"   # ours with scale.compile

    @property
    def name(self) -> str:
        if self.runner == "launcher":
            compiled = "" if self.compile == "off" else f" compile={self.compile}"
            return (f"launcher {self.strategy}{' packed' if self.packed else ''}{compiled} "
                    f"b{self.micro_batch}")
        return f"HF Trainer {self.settings} b{self.micro_batch}"

    @property
    def slug(self) -> str:
        return self.name.lower().replace(" ", "-")


def configurations(strategies: list[str], batches: list[int], baselines: list[str],
                   packing: list[bool], compiles: list[str]) -> list[Config]:
    out = []
    for batch in batches:
        out += [Config("launcher", s, batch, packed=p, compile=c)
                for s in strategies for c in compiles for p in packing]
        out += [Config("hf-trainer", "ddp", batch, BASELINES[b]) for b in baselines]
    return out


def bench_command(loaded: LoadedRecipe, *, steps: int, warmup: int, out: Optional[str],
                  baselines: list[str], synthetic_data: bool, batches: list[int],
                  strategies: list[str], procs: int, peak: Optional[float], argv: list[str],
                  console: Console, packing: str = "recipe",
                  compiles: Optional[list[str]] = None) -> int:
    recipe = loaded.recipe
    if recipe.task.type != "sequence_classification":
        raise RecipeError("task.type", f"is {recipe.task.type}; the benchmark measures "
                          "sequence classification (the throughput case HF Trainer is compared "
                          "on)", "bench a sequence_classification recipe")
    for s in strategies:
        if s not in STRATEGIES:
            raise RecipeError("--strategies", f"has {s!r}", f"use some of {', '.join(STRATEGIES)}")
    for b in baselines:
        if b not in BASELINES:
            raise RecipeError("--baseline", f"is {b!r}", f"use {' or '.join(BASELINES)}")
    compiles = compiles or [recipe.scale.compile]
    for mode in compiles:
        if mode not in COMPILE_MODES:
            raise RecipeError("--compile", f"has {mode!r}",
                              f"use some of {', '.join(COMPILE_MODES)}")
    if steps < 2 or warmup < 1:
        raise RecipeError("--steps", f"{steps} timed after {warmup} warm-up",
                          "time 2 or more steps after 1 or more warm-up steps")
    packed = {"recipe": [recipe.data.packing], "on": [True], "off": [False],
              "both": [False, True]}[packing]
    batches = batches or [recipe.scale.micro_batch]
    configs = configurations(strategies or [recipe.scale.strategy], batches, baselines, packed,
                             compiles)
    # A recipe mistake in any configuration stops them all before anything is written.
    for config in configs:
        if config.runner == "launcher":
            try:
                validate(_our_recipe(loaded, {"overrides": []}, config, Path("."), steps,
                                     warmup, procs))
            except RecipeError as err:
                raise err.with_source(str(loaded.path)) from None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(out or f"runs/bench-{loaded.path.stem}-{stamp}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    inputs = _inputs(loaded, root, synthetic_data, rows=(warmup + steps + 1) * max(batches) * procs)
    results = []
    for config in configs:
        console.print(f"[bold]bench[/] {config.name}: {warmup} warm-up + {steps} timed steps on "
                      f"{procs} process(es)", highlight=False)
        run = _run_ours if config.runner == "launcher" else _run_hf
        result = run(loaded, inputs, config, root / "runs" / config.slug, steps, warmup, procs)
        if result.get("error"):
            console.print(f"  [red]failed:[/] {result['error']}", highlight=False)
        results.append(result)
    meta = _meta(loaded, results, procs, peak, argv, synthetic_data)
    rows = report.write_report(root, results, meta)
    console.print(report.table(rows, f"{loaded.path.name} on {meta['device']}"))
    console.print(", ".join(f"{k} {v}" for k, v in meta["versions"].items()), highlight=False)
    console.print(f"report: {root / 'REPORT.md'}", highlight=False)
    return 0 if all(not r.get("error") for r in results) else 1


def _inputs(loaded: LoadedRecipe, root: Path, synthetic_data: bool, rows: int) -> dict:
    """The model directory, rows file and columns every configuration trains on."""
    r = loaded.recipe
    if not synthetic_data:
        return {"overrides": [], "model": r.model.name, "tokenizer": r.model.tokenizer,
                "pretrained": r.model.pretrained, "train": r.data.train,
                "text": r.data.text_column or "text", "pair": r.data.text_pair_column,
                "label": r.data.label_column or "label"}
    model = synthetic.write_model(r, root / "inputs" / "model")
    train = synthetic.write_rows(root / "inputs" / "train.jsonl", model, rows,
                                 r.data.max_length, len(r.task.labels), r.run.seed)
    return {"overrides": [f"model.name={model}", "model.tokenizer=None", "model.pretrained=False",
                          "model.config_overrides={}", f"data.train={train}", "data.eval=None",
                          "data.train_examples=None", "data.id_column=id",
                          "data.text_column=text", "data.text_pair_column=None",
                          "data.label_column=label", "task.class_weights=None"],
            "model": str(model), "tokenizer": None, "pretrained": False, "train": str(train),
            "text": "text", "pair": None, "label": "label"}


def _failure(config: Config, why: str) -> dict:
    return {"name": config.name, "runner": config.runner, "strategy": config.strategy,
            "micro_batch": config.micro_batch, "error": why}


def _our_recipe(loaded: LoadedRecipe, inputs: dict, config: Config, run_dir: Path, steps: int,
                warmup: int, procs: int):
    overrides = [*inputs["overrides"], "scale.nodes=1", f"scale.procs_per_node={procs}",
                 f"scale.strategy={config.strategy}", f"scale.micro_batch={config.micro_batch}",
                 "scale.global_batch=None", "scale.grad_accum=1", "run.epochs=None",
                 f"run.max_steps={warmup + steps}", "run.executor=local",
                 "run.trace_examples=False", f"run.output_dir={run_dir}", "eval.every=0",
                 "run.report_to=tensorboard",
                 "checkpoint.every=0", f"data.packing={config.packed}",
                 f"scale.compile={config.compile}"]
    return apply_overrides(loaded.recipe, overrides, dict(loaded.sources))


def _run_ours(loaded: LoadedRecipe, inputs: dict, config: Config, run_dir: Path, steps: int,
              warmup: int, procs: int) -> dict:
    recipe = _our_recipe(loaded, inputs, config, run_dir, steps, warmup, procs)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a bench run never resumes
    result_path = run_dir / "result.json"
    plan = dataclasses.replace(plan_mod.build(dataclasses.replace(loaded, recipe=recipe)),
                               bench={"name": config.name, "warmup_steps": warmup,
                                      "result": str(result_path)})
    plan_dir = run_dir / "plan"
    plan_mod.write(plan, plan_dir)
    env = {**local_env(plan), **os.environ, "PYTHON": sys.executable}
    rc = _torchrun(["bash", str(plan_dir / "launch.sh")], env, run_dir / "launch.log")
    return _collect(config, rc, result_path, run_dir)


def _run_hf(loaded: LoadedRecipe, inputs: dict, config: Config, run_dir: Path, steps: int,
            warmup: int, procs: int) -> dict:
    r = loaded.recipe
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    result_path.unlink(missing_ok=True)
    spec = run_dir / "hf_trainer.json"
    spec.write_text(json.dumps({
        "model_dir": inputs["model"], "tokenizer": inputs["tokenizer"],
        "pretrained": inputs["pretrained"], "train_file": inputs["train"],
        "text_column": inputs["text"], "text_pair_column": inputs["pair"],
        "label_column": inputs["label"], "labels": list(r.task.labels),
        "dataset_config": None if inputs["overrides"] else r.data.dataset_config,
        "split": "train" if inputs["overrides"] else r.data.train_split,
        "max_length": r.data.max_length, "micro_batch": config.micro_batch, "grad_accum": 1,
        "precision": r.scale.precision, "settings": config.settings, "warmup_steps": warmup,
        "steps": steps, "lr": r.optim.lr, "seed": r.run.seed, "name": config.name,
        "result": str(result_path), "work_dir": str(run_dir / "trainer")}, indent=1) + "\n")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", threads_per_rank(procs))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(procs), "-m", "launcher.bench.hf_trainer", str(spec)]
    rc = _torchrun(command, env, run_dir / "launch.log")
    return _collect(config, rc, result_path, run_dir)


def _torchrun(command: list[str], env: dict, log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        fh.write("$ " + shlex.join(command) + "\n")
        fh.flush()
        return subprocess.run(command, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode


def _collect(config: Config, rc: int, result_path: Path, run_dir: Path) -> dict:
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if rc != 0 and not result.get("error"):
            # Measured to the end, then a rank died on the way out: the numbers stand, and
            # the report says what happened.
            result["warning"] = (f"the job exited with status {rc} after writing its result "
                                 f"({_why(run_dir)}; see {run_dir / 'launch.log'})")
        return result
    return _failure(config, f"{_why(run_dir)} (exit status {rc}; see {run_dir / 'launch.log'})")


def _why(run_dir: Path) -> str:
    """One line on why a configuration failed: the first rank's error, else the log's."""
    # A rank's error file ends with its exception; in torchrun's log the first rank to go
    # comes first.
    texts = [(p.read_text(errors="replace"), -1)
             for p in sorted((run_dir / "logs").glob("rank*.error"))]
    log = run_dir / "launch.log"
    texts.append((log.read_text(errors="replace") if log.is_file() else "", 0))
    for text, which in texts:
        if "out of memory" in text.lower():
            return "CUDA out of memory"
        found = _ERROR_LINE.findall(text)
        if found:
            return found[which].strip()[:300]
    return "no result written"


# An exception with its message (torchrun's own ChildFailedError says only that a child
# failed), or the C++ runtime's last words.
_ERROR_LINE = re.compile(r"^(?!.*ChildFailedError)(?:\w+\.)*\w*(?:Error|Exception): .+$"
                         r"|^terminate called.*$|^.*Signal \d+ \(SIG\w+\) received.*$", re.M)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "deepspeed", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    import torch
    out["cuda"] = torch.version.cuda or "none (CPU build)"
    return out


def _meta(loaded: LoadedRecipe, results: list[dict], procs: int, peak: Optional[float],
          argv: list[str], synthetic_data: bool) -> dict:
    device = next((r["device"] for r in results if r.get("device")), "unknown")
    precision = loaded.recipe.scale.precision
    notes = []
    if synthetic_data:
        notes.append("Synthetic inputs (--synthetic): random weights of the recipe model's "
                     "shape, rows of generated words with AG-News-like lengths.")
    notes += [f"{r['name']}: {r['warning']}" for r in results if r.get("warning")]
    notes.append("HF Trainer is timed with a device sync at each step's end (its loop syncs "
                 "every micro step anyway, in its NaN-loss check); ours with CUDA events, "
                 "which add no sync.")
    if peak is None:
        peak = flops.peak_tflops(device, precision)
    return {
        "date": datetime.date.today().isoformat(), "device": device, "precision": precision,
        "peak_tflops": peak, "world_size": procs, "versions": _versions(),
        "recipe": str(loaded.path), "command": "python -m launcher " + shlex.join(argv),
        "length_model": synthetic.LENGTH_MODEL if synthetic_data else "the recipe's own data",
        "formula": flops.FORMULA, "notes": notes,
    }
