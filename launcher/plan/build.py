"""Recipe -> Plan: every derived value (world size, accumulation, steps) computed once, here.

Pure apart from one pass over local data files (plan/scan.py), so that a missing column, a
label the head cannot hold or a batch larger than the data is caught before anything is queued.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from launcher import families, sources as src_mod
from launcher import tasks
from launcher.errors import RecipeError
from launcher.plan.scan import Scan, bad_data, balanced_weights, scan
from launcher.recipe.load import LoadedRecipe, recipe_from_dict
from launcher.recipe.schema import Recipe, to_dict
from launcher.recipe.validate import validate


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    recipe_path: str
    name: str
    run_dir: str
    nodes: int
    procs_per_node: int
    world_size: int
    micro_batch: int
    grad_accum: int
    global_batch: int
    eval_micro_batch: int
    train_examples: Optional[int]
    steps_per_epoch: Optional[int]
    total_steps: int
    warmup_steps: int
    has_eval: bool
    # data column per role (text, pair, label, id), the task's defaults filled in
    columns: dict[str, Optional[str]]
    # what the pass over local files found: rows, empty rows, label counts ({} for hub data)
    data_checks: dict[str, dict]
    # resolved cross-entropy weights (task.class_weights; 'balanced' counted in data.train)
    class_weights: Optional[list[float]]
    # dotted field -> where its value came from, for `--explain`
    sources: dict[str, str]
    # what the ranks train on, scale.device resolved: "cuda" or "cpu" (the engine refuses a
    # cuda plan on a node without the GPUs instead of falling back to CPU). Plans written
    # before scale.device existed read as "cpu".
    device: str = "cpu"
    # Token budgets (scale.tokens_per_step): real tokens per step and the most tokens of one
    # micro batch; then global_batch is 0 (examples per step vary) and grad_accum 1 (the
    # engine accumulates over each step's micro batches itself), and steps_per_epoch and
    # total_steps are estimates (steps_estimated) unless run.max_steps set the total.
    tokens_per_step: Optional[int] = None
    micro_tokens: Optional[int] = None
    steps_estimated: bool = False
    # `launcher bench` only (bench/run.py writes it): {"name", "warmup_steps", "result"}: the
    # engine times its loop (engine/step_timer.py), writes the result to that path and trains
    # nothing else (no eval, checkpoint or export). None for a run.
    bench: Optional[dict[str, Any]] = None
    # the fault tests only: faults to inject (engine/faults.py), which the executor that
    # prepares the run copies from LAUNCHER_FAULT in the launching shell; [] otherwise.
    faults: list[dict[str, str]] = dataclasses.field(default_factory=list)

    @property
    def derived(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("recipe", "sources", "recipe_path", "name", "run_dir",
                                  "data_checks", "bench", "faults")}

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["recipe"] = to_dict(self.recipe)
        # A run's plan.json says nothing of the bench or the fault tests.
        for test_only in ("bench", "faults"):
            if not data[test_only]:
                del data[test_only]
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        data["recipe"] = recipe_from_dict(data["recipe"])
        return cls(**data)


def build(loaded: LoadedRecipe, *, run_dir: Optional[str] = None) -> Plan:
    try:
        return _build(loaded, run_dir)
    except RecipeError as err:
        raise err.with_source(str(loaded.path)) from None


def _build(loaded: LoadedRecipe, run_dir: Optional[str]) -> Plan:
    recipe, sources = loaded.recipe, dict(loaded.sources)
    validate(recipe)
    task = tasks.for_recipe(recipe)
    task.validate()
    families.check(recipe)
    _check_class_weights(recipe, task)
    if task.cols.pair is not None and task.cols.pair == task.cols.text:
        raise RecipeError("data.text_pair_column", "is the same column as data.text_column",
                          "name the second text's column or remove it")
    metric = recipe.eval.metric
    if metric is not None and metric not in task.metric_names:
        raise RecipeError("eval.metric", f"'{metric}' is not a {task.type} metric",
                          f"use one of {', '.join(task.metric_names)}")
    s, r = recipe.scale, recipe.run
    world = s.nodes * s.procs_per_node
    micro_tokens = _check_budget(recipe, task, world)
    if micro_tokens is None:
        grad_accum, global_batch = _batch(s.micro_batch, s.grad_accum, s.global_batch, world)
    else:
        grad_accum, global_batch = 1, 0
        if s.micro_tokens is None:
            sources["scale.micro_tokens"] = "derived: scale.micro_batch x data.max_length"
    sources["scale.grad_accum"] = sources["scale.grad_accum"] if s.grad_accum else "derived"
    sources["scale.global_batch"] = sources["scale.global_batch"] if s.global_batch else "derived"
    device, why = _device(recipe)
    if why:
        sources["scale.device"] = f"derived: {why}"
    if device == "cpu" and s.precision == "fp16":
        raise RecipeError("scale.precision", f"is fp16 but the plan trains on cpu "
                          f"({why or 'scale.device=cpu'}), where fp16 does not train",
                          "use scale.precision=bf16 or fp32 on CPU, or scale.device=cuda")

    train, eval_src = _sources(recipe, task)
    checks = {}
    if train.is_local:
        checks["train"] = scan(task, train, field="data.train")
    if eval_src is not None and eval_src.is_local:
        # every row: eval.max_examples samples from the whole split
        checks["eval"] = scan(task, eval_src, field="data.eval")
    train_examples = _train_examples(recipe, train, checks.get("train"))
    weights = recipe.task.class_weights
    if weights == "balanced":
        weights = balanced_weights(task, checks["train"]) if "train" in checks else None
    steps_per_epoch = None
    if micro_tokens is not None:
        steps_per_epoch = _budget_steps_estimate(recipe, checks.get("train"))
    elif train_examples is not None:
        # The last partial global batch of an epoch is dropped so every rank runs the same
        # number of steps without agreeing on it at run time.
        steps_per_epoch = train_examples // global_batch
        if steps_per_epoch == 0:
            knob = ("scale.global_batch" if s.global_batch else
                    "scale.micro_batch or scale.grad_accum")
            raise RecipeError("scale.global_batch",
                              f"one optimizer step needs {global_batch} examples but data.train "
                              f"has {train_examples}", f"lower {knob}")
    total_steps = r.max_steps if r.max_steps is not None else steps_per_epoch * r.epochs
    name = r.name or safe_name(loaded.path.stem)
    directory = run_dir or r.output_dir or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Plan(
        recipe=recipe, recipe_path=str(loaded.path.resolve()), name=name,
        run_dir=str(Path(directory).expanduser().resolve()),
        nodes=s.nodes, procs_per_node=s.procs_per_node, world_size=world,
        micro_batch=s.micro_batch, grad_accum=grad_accum, global_batch=global_batch,
        eval_micro_batch=recipe.eval.micro_batch or 2 * s.micro_batch,
        train_examples=train_examples, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        warmup_steps=math.ceil(recipe.optim.warmup_ratio * total_steps),
        has_eval=eval_src is not None, columns=dataclasses.asdict(task.cols),
        data_checks={k: v.to_dict() for k, v in checks.items()},
        class_weights=list(weights) if weights is not None else None, sources=sources,
        device=device,
        tokens_per_step=s.tokens_per_step, micro_tokens=micro_tokens,
        steps_estimated=micro_tokens is not None and steps_per_epoch is not None,
    )


def safe_name(stem: str) -> str:
    """A run name from a recipe's file name, in the characters run.name allows: it names the
    run directory, the Slurm job and torchrun's rendezvous."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lstrip("._-")
    return name or "run"


def _device(recipe: Recipe) -> tuple[str, Optional[str]]:
    """scale.device resolved, and why when it was 'auto' (None when the recipe said)."""
    wanted = recipe.scale.device
    if wanted != "auto":
        return wanted, None
    if recipe.run.executor == "slurm":
        return "cuda", "run.executor is slurm (GPU nodes)"
    if recipe.scale.nodes > 1:
        # The local executor runs one machine only: a multi-node plan is for a cluster.
        return "cuda", f"scale.nodes is {recipe.scale.nodes} (a cluster's GPU nodes)"
    gpus = visible_gpus()
    if gpus:
        return "cuda", f"this machine has {gpus} GPU(s)"
    return "cpu", "no GPU on this machine"


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, found without importing torch (planning stays light);
    the local executor asks torch itself before it launches a cuda plan."""
    found = len(glob.glob("/dev/nvidia[0-9]*")) or len(glob.glob("/proc/driver/nvidia/gpus/*"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [i for i in visible.split(",") if i.strip()]
        # CUDA stops at the first invalid id; "-1" or "" hides every GPU
        found = 0 if not ids or ids[0].strip().startswith("-") else min(found, len(ids))
    return found


def _check_class_weights(recipe: Recipe, task: tasks.Task) -> None:
    weights = recipe.task.class_weights
    if weights is None:
        return
    if task.type == "question_answering":
        raise RecipeError("task.class_weights", "is not used by question_answering",
                          "remove task.class_weights")
    if weights != "balanced":
        if len(weights) != len(task.labels):
            raise RecipeError("task.class_weights", f"has {len(weights)} weights for "
                              f"{len(task.labels)} labels", "give one weight per task.labels "
                              "entry, in the same order, or 'balanced'")
        if not all(w > 0 for w in weights):
            raise RecipeError("task.class_weights", f"must all be positive, got {list(weights)}",
                              "use weights above 0")


def _check_budget(recipe: Recipe, task: tasks.Task, world: int) -> Optional[int]:
    """scale.tokens_per_step and scale.micro_tokens checked; the micro batch's token limit,
    or None without a token budget."""
    s, d = recipe.scale, recipe.data
    budget = s.tokens_per_step
    if budget is None:
        if s.micro_tokens is not None:
            raise RecipeError("scale.micro_tokens", "is set but scale.tokens_per_step is not "
                              "(it limits the micro batches of a token budget)",
                              "set scale.tokens_per_step=N as well, or remove scale.micro_tokens")
        return None
    fixed = [f for f, v in (("scale.global_batch", s.global_batch),
                            ("scale.grad_accum", s.grad_accum)) if v is not None]
    if fixed:
        raise RecipeError("scale.tokens_per_step", f"and {' and '.join(fixed)} are both set: a "
                          "step is either a token budget or a number of examples",
                          f"remove {' and '.join(fixed)} (set it to none), or remove "
                          "scale.tokens_per_step")
    if d.streaming:
        raise RecipeError("scale.tokens_per_step", "needs every example's token length before "
                          "an epoch starts, which a stream (data.streaming=true) does not give",
                          "set data.streaming=false (the split is prepared as Arrow), or use "
                          "scale.global_batch")
    if task.type == "question_answering":
        raise RecipeError("scale.tokens_per_step", "is not supported for question_answering "
                          "(an example is several windows)", "use scale.global_batch")
    if s.strategy.startswith("zero"):
        raise RecipeError("scale.tokens_per_step", f"is not supported with scale.strategy="
                          f"{s.strategy}: DeepSpeed accumulates a fixed number of micro "
                          "batches per step", "use scale.strategy=ddp or fsdp, or "
                          "scale.global_batch")
    if budget < d.max_length:
        raise RecipeError("scale.tokens_per_step", f"is {budget}, less than data.max_length="
                          f"{d.max_length}: an example that long would fit in no step",
                          f"set scale.tokens_per_step to {d.max_length} or more (e.g. "
                          f"{max(d.max_length, 64) * 32 * world})")
    micro = s.micro_tokens if s.micro_tokens is not None else s.micro_batch * d.max_length
    rows_multiple = 4 if s.compile != "off" else 1
    # A micro batch of one example at data.max_length (budget.py imports no torch).
    from launcher.engine.budget import micro_cost
    floor = micro_cost(1, d.max_length, d.pad_to_multiple_of or 1,
                       d.max_length if d.packing else None, rows_multiple)
    if micro < floor:
        how = (f"{rows_multiple} packed row(s) of data.max_length={d.max_length}" if d.packing
               else f"data.max_length={d.max_length} padded to a multiple of "
                    f"{d.pad_to_multiple_of or 1}")
        raise RecipeError("scale.micro_tokens", f"is {micro} but a micro batch of one "
                          f"example takes up to {floor} tokens ({how})",
                          f"set scale.micro_tokens to {floor} or more, or lower data.max_length")
    return micro


def _budget_steps_estimate(recipe: Recipe, checked: Optional[Scan]) -> Optional[int]:
    """Steps per epoch under a token budget, estimated from the scan's word count (about 1.3
    tokens a word, plus the special tokens, at most data.max_length an example): an
    estimate, the engine counts the real steps from the tokenized examples."""
    if checked is None and recipe.run.epochs is not None:
        raise RecipeError("scale.tokens_per_step", "with run.epochs needs a local data.train "
                          "to estimate steps per epoch from its text",
                          "use run.max_steps with a hub dataset")
    if checked is None or not checked.usable:
        return None  # run.max_steps gives the total
    mean = checked.tokens_estimate / checked.usable
    per_step = max(mean, recipe.scale.tokens_per_step - mean / 2)
    return max(1, math.ceil(checked.tokens_estimate / per_step))


def _batch(micro: int, accum: Optional[int], global_batch: Optional[int], world: int) -> tuple[int, int]:
    per_step = micro * world
    if global_batch is None:
        accum = accum or 1
        return accum, per_step * accum
    if accum is not None and per_step * accum != global_batch:
        raise RecipeError("scale.global_batch",
                          f"is {global_batch} but micro_batch x grad_accum x world size is "
                          f"{micro} x {accum} x {world} = {per_step * accum}",
                          f"drop scale.grad_accum (it is derived) or set scale.global_batch="
                          f"{per_step * accum}")
    if global_batch % per_step:
        raise RecipeError("scale.global_batch",
                          f"{global_batch} is not a multiple of micro_batch x world size "
                          f"({micro} x {world} = {per_step})",
                          f"set scale.global_batch to a multiple of {per_step}, e.g. "
                          f"{max(1, round(global_batch / per_step)) * per_step}")
    return global_batch // per_step, global_batch


def _sources(recipe: Recipe, task: tasks.Task) -> tuple[src_mod.Source, Optional[src_mod.Source]]:
    d = recipe.data
    train = src_mod.resolve(d.train, config=d.dataset_config, split=d.train_split)
    if d.eval is not None:
        eval_src = src_mod.resolve(d.eval, config=d.dataset_config, split=d.eval_split)
    elif not train.is_local:
        eval_src = src_mod.resolve(d.train, config=d.dataset_config, split=d.eval_split)
    else:
        eval_src = None
    for field, src in (("data.train", train), ("data.eval", eval_src)):
        if src is not None and src.is_local:
            _check_local(task, field, src)
    return train, eval_src


def local_columns(field: str, src: src_mod.Source) -> set:
    """The columns of a local data file named by `field`, every line read; one-line errors for
    a directory, a missing file, a type the engine does not read, or a malformed line."""
    if src_mod.is_pattern(src.name) and not src.files:
        raise RecipeError(field, f"no file matches {src.name}",
                          "fix the pattern (relative paths start at the current directory)")
    if len(src.files) > 1:
        import dataclasses

        have = [local_columns(field, dataclasses.replace(src, name=str(f), path=f, files=(f,)))
                for f in src.files]
        for f, cols in zip(src.files, have):
            if cols != have[0]:
                raise RecipeError(field, f"{f} has columns {', '.join(sorted(cols))} but "
                                  f"{src.files[0]} has {', '.join(sorted(have[0]))}",
                                  f"give {src.name} files of one set of columns")
        return have[0]
    if src.path.is_dir():
        raise RecipeError(field, f"{src.name} is a directory, not a data file",
                          "name one .jsonl/.json/.csv/.parquet file")
    if not src.path.is_file():
        raise RecipeError(field, f"file {src.name} does not exist",
                          "fix the path (relative paths start at the current directory)")
    if not src.builder:
        raise RecipeError(field, f"{src.name} is not a file type the engine reads",
                          f"convert it to one of {', '.join(src_mod.FORMATS)}")
    try:
        return set(src_mod.columns(src))
    except src_mod.BadData as err:
        raise bad_data(field, err) from None


def _check_local(task: tasks.Task, field: str, src: src_mod.Source) -> None:
    have = local_columns(field, src)
    for col_field, col in task.cols.fields().items():
        if col is not None and col not in have:
            raise RecipeError(col_field,
                              f"column '{col}' is not in {src.name} (it has {', '.join(have)})",
                              f"set {col_field} to one of its columns")


def _train_examples(recipe: Recipe, train: src_mod.Source, checked: Optional[Scan]) -> Optional[int]:
    if recipe.data.train_examples is not None:
        return recipe.data.train_examples
    if checked is not None:
        return checked.usable
    if recipe.run.max_steps is not None:
        return None  # a stream of unknown length: the engine starts a new epoch when it ends
    raise RecipeError("data.train_examples",
                      f"is needed to plan run.epochs for hub dataset '{train.name}'",
                      "set data.train_examples to the split's size, or use run.max_steps")
