"""Checks between fields of one recipe, before any derived value is computed."""

from __future__ import annotations

import math
import re

from launcher.errors import RecipeError
from launcher.recipe.schema import Recipe


def _positive(path: str, value: int | float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    floor = "0 or more" if allow_zero else "1 or more"
    if not math.isfinite(value):  # nan slips past the checks below; nan/inf break the JSON
        raise RecipeError(path, f"must be a finite number, got {value}", f"set {path} to {floor}")
    if value < 0 or (value == 0 and not allow_zero):
        raise RecipeError(path, f"must be {floor}, got {value}", f"set {path} to {floor}")


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _plain_text(path: str, value: object) -> None:
    """No newline or other control character: the value lands on one line of a script."""
    if isinstance(value, str) and _CONTROL.search(value):
        raise RecipeError(path, f"{value!r} holds a newline or another control character",
                          f"write {path} on one line, without control characters")


def _check_slurm(recipe: Recipe) -> None:
    sl = recipe.slurm
    for key in sl.env:
        if not isinstance(key, str) or not _IDENTIFIER.fullmatch(key):
            raise RecipeError("slurm.env", f"{key!r} is not a variable name",
                              "use letters, digits and '_', not starting with a digit")
    for name in sl.pass_env:
        if not _IDENTIFIER.fullmatch(name):
            raise RecipeError("slurm.pass_env", f"{name!r} is not a variable name",
                              "list variable names only (letters, digits and '_'), no values")
        if name in sl.env:
            raise RecipeError("slurm.pass_env", f"{name} is also set in slurm.env",
                              "keep it in one of the two (secrets in pass_env)")
    for field in ("partition", "account", "qos", "constraint", "mem"):
        _plain_text(f"slurm.{field}", getattr(sl, field))
    for line in sl.extra_sbatch:
        if not re.fullmatch(r"--?[A-Za-z][A-Za-z0-9_-]*(=[^\x00-\x1f\x7f]*)?", line):
            raise RecipeError("slurm.extra_sbatch", f"{line!r} is not one sbatch option",
                              "write each as '--option=value' or '--flag', one per item")
    _plain_text("run.output_dir", recipe.run.output_dir)


def validate(recipe: Recipe) -> None:
    m, t, d, s, o, c, e, r = (recipe.model, recipe.task, recipe.data, recipe.scale,
                              recipe.optim, recipe.checkpoint, recipe.eval, recipe.run)
    if r.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.name):
        raise RecipeError("run.name", f"{r.name!r} is not usable as a directory and job name",
                          "use letters, digits, '.', '_' and '-', starting with a letter or digit")
    _check_slurm(recipe)
    if s.gpu is not None:
        from launcher.plan.memory import GPUS
        if s.gpu not in GPUS:
            raise RecipeError("scale.gpu", f"{s.gpu!r} is not a GPU this launcher knows",
                              f"use one of {', '.join(GPUS)}, or leave it unset")
    if not m.name.strip():
        raise RecipeError("model.name", "is empty", "name a hub model or a local directory")
    _positive("model.freeze_layers", m.freeze_layers, allow_zero=True)
    for path, p in (("model.dropout", m.dropout), ("model.classifier_dropout", m.classifier_dropout),
                    ("model.head_dropout", m.head_dropout)):
        if p is not None and not 0.0 <= p < 1.0:
            raise RecipeError(path, f"must be in [0, 1), got {p}", f"set {path} to e.g. 0.1")
    if not 0 <= t.label_smoothing < 1:
        raise RecipeError("task.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}",
                          "set task.label_smoothing to e.g. 0.1, or 0 to turn it off")
    if not 0 < t.threshold < 1:
        raise RecipeError("task.threshold", f"must be between 0 and 1, got {t.threshold}",
                          "set task.threshold to e.g. 0.5")
    for path, v in (("data.max_length", d.max_length), ("data.pad_to_multiple_of", d.pad_to_multiple_of),
                    ("data.train_examples", d.train_examples),
                    ("data.shuffle_window", d.shuffle_window), ("scale.nodes", s.nodes),
                    ("scale.procs_per_node", s.procs_per_node), ("scale.micro_batch", s.micro_batch),
                    ("scale.grad_accum", s.grad_accum), ("scale.global_batch", s.global_batch),
                    ("scale.tokens_per_step", s.tokens_per_step),
                    ("scale.micro_tokens", s.micro_tokens),
                    ("scale.timeout_s", s.timeout_s),
                    ("checkpoint.keep_last", c.keep_last), ("checkpoint.grace_s", c.grace_s),
                    ("eval.micro_batch", e.micro_batch),
                    ("eval.max_examples", e.max_examples), ("run.max_steps", r.max_steps),
                    ("run.epochs", r.epochs), ("run.log_every", r.log_every),
                    ("model.head_hidden", m.head_hidden), ("data.doc_stride", d.doc_stride),
                    ("eval.early_stopping_patience", e.early_stopping_patience)):
        _positive(path, v)
    for path, v in (("data.num_workers", d.num_workers), ("checkpoint.every", c.every),
                    ("eval.every", e.every), ("optim.weight_decay", o.weight_decay),
                    ("optim.max_grad_norm", o.max_grad_norm), ("optim.eps", o.eps)):
        _positive(path, v, allow_zero=True)
    if d.packing and t.type not in ("sequence_classification", "multi_label_classification"):
        raise RecipeError("data.packing", f"packs examples for a pooled classifier; task.type "
                          f"{t.type} reads every token's output", "set data.packing=false")
    if s.compile != "off" and s.strategy != "ddp":
        raise RecipeError("scale.compile", f"is {s.compile} with scale.strategy={s.strategy}; "
                          "compiling is supported with ddp (DeepSpeed's and FSDP's hooks break "
                          "the graph)", "set scale.compile=off, or scale.strategy=ddp")
    if d.max_length < 8:
        raise RecipeError("data.max_length", f"is {d.max_length}, too short for [CLS] text [SEP]",
                          "set data.max_length to 8 or more (128 is usual)")
    if not 0 < o.lr < 1:
        raise RecipeError("optim.lr", f"must be between 0 and 1, got {o.lr}",
                          "set optim.lr to e.g. 2e-5")
    if not 0 <= o.warmup_ratio < 1:
        raise RecipeError("optim.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}",
                          "set optim.warmup_ratio to e.g. 0.1")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise RecipeError("optim.betas", f"must be two numbers in [0, 1), got {list(o.betas)}",
                          "set optim.betas=0.9,0.999")
    if (r.max_steps is None) == (r.epochs is None):
        raise RecipeError("run.max_steps", "exactly one of run.max_steps and run.epochs must be set",
                          "set run.max_steps=N or run.epochs=N, not both and not neither")
    if e.early_stopping_patience is not None and not (e.every or 0):
        raise RecipeError("eval.early_stopping_patience", "needs evaluations during training, "
                          "but eval.every is 0 (only at the end)", "set eval.every=N steps")
