"""A bad recipe, override or flag: exit 2, one line naming the field with a fix, nothing written.

Every case runs the real CLI entry point (`launcher.cli.main(["render", ...])`) in-process, as
`python -m launcher` calls it; two tests run it in a real process to show end to end that a
refusal leaves no traceback and exits with status 2.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, cli_env, launcher


def _render(recipe: Path | str, *args: str, out: Path) -> subprocess.CompletedProcess:
    return launcher("render", recipe, *args, "--out", out, timeout=120)


@pytest.fixture
def render(cli):
    """`python -m launcher render ...` in this process (conftest.cli)."""
    return lambda recipe, *args, out: cli("render", recipe, *args, "--out", out)


# --- malformed recipe files --------------------------------------------------------------------

_SECTIONS = {
    "model": "ModelConfig(name=ROOT + '/models/tiny-bert', pretrained=False)",
    "task": "TaskConfig(labels=('World', 'Sports', 'Business', 'Sci/Tech'))",
    "data": ("DataConfig(train=ROOT + '/data/tiny_news/train.jsonl', "
             "eval=ROOT + '/data/tiny_news/eval.jsonl', id_column='id', max_length=64, "
             "num_workers=0)"),
    "scale": "ScaleConfig(precision='fp32', micro_batch=32)",
    "run": "RunConfig(epochs=1)",
}


def recipe_source(*, extra: str = "", assign: str = "recipe", **sections: str) -> str:
    """A small, valid recipe file (tiny model, tiny_news data) with some sections replaced."""
    body = ",\n    ".join(f"{name}={sections.get(name, text)}" for name, text in _SECTIONS.items())
    return (f"from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig,\n"
            f"    OptimConfig, Recipe, RunConfig, ScaleConfig, TaskConfig)\n"
            f"ROOT = {str(REPO)!r}\n\n"
            f"{assign} = Recipe(\n    {body}{extra}\n)\n")


def _file(text: str):
    return ("file", text)


def _case(case_id, recipe, overrides, field, *contains):
    return pytest.param(recipe, list(overrides), field, contains, id=case_id)


CASES = [
    # -- in the recipe file --
    _case("file-unknown-field", _file(recipe_source(scale="ScaleConfig(micro_bach=4)")), [],
          "scale.micro_bach", "micro_batch"),
    _case("file-unknown-section", _file(recipe_source(extra=",\n    sclae=ScaleConfig()")), [],
          "recipe.sclae", "scale"),
    _case("file-missing-required", _file(recipe_source(model="ModelConfig(pretrained=False)")), [],
          "model.name", "required"),
    _case("file-wrong-type-int", _file(recipe_source(scale="ScaleConfig(micro_batch='8')")), [],
          "scale.micro_batch", "'8'"),
    _case("file-bool-not-bool",
          _file(recipe_source(model="ModelConfig(name=ROOT + '/models/tiny-bert', "
                                    "pretrained='no')")), [],
          "model.pretrained", "true or false"),
    _case("file-fp16-and-bf16", _file(recipe_source(scale="ScaleConfig(bf16=True, fp16=True)")), [],
          "scale.fp16", "bf16"),
    _case("file-alias-not-bool", _file(recipe_source(scale="ScaleConfig(bf16='yes')")), [],
          "scale.bf16", "True"),
    _case("file-alias-contradicts-precision",
          _file(recipe_source(scale="ScaleConfig(precision='fp32', fp16=True)")), [],
          "scale.fp16", "fp32"),
    _case("file-section-not-a-section",
          _file(recipe_source(scale="{'micro_batch': 8}")), [], "scale", "ScaleConfig"),
    _case("file-unknown-strategy", _file(recipe_source(scale="ScaleConfig(strategy='zero-2')")),
          [], "scale.strategy", "zero2"),
    _case("file-labels-one", _file(recipe_source(task="TaskConfig(labels=('World',))")), [],
          "task.labels", "two"),
    _case("file-labels-a-string", _file(recipe_source(task="TaskConfig(labels='World')")), [],
          "task.labels", "list"),
    # An echoed value that looks like rich markup must be printed as text, not parsed.
    _case("file-label-looks-like-markup",
          _file(recipe_source(task="TaskConfig(labels=('[b]',))")), [], "task.labels", "'[b]'"),
    _case("file-no-recipe", _file(recipe_source(assign="my_recipe")), [], "recipe",
          "recipe = Recipe("),
    _case("file-syntax-error", _file("from launcher.recipe import Recipe\nrecipe = Recipe(\n"), [],
          "recipe", "syntax error"),
    _case("file-raises", _file("import launcher_no_such_module\n"), [], "recipe",
          "ModuleNotFoundError"),
    _case("file-does-not-exist", ("path", "recipes/no_such_recipe.py"), [], "recipe",
          "does not exist"),
    # -- overrides on the command line (tiny_news: micro 32, 1 process, 4000 train rows) --
    _case("override-unknown-key", TINY, ["optim.lrr=1"], "optim.lrr", "optim.lr"),
    _case("override-without-equals", TINY, ["optim.lr"], "optim.lr", "section.field=value"),
    _case("override-unknown-section", TINY, ["optimizer.lr=1e-4"], "optimizer.lr",
          "not a section"),
    _case("override-no-section", TINY, ["lr=1e-4"], "lr", "not a section"),
    _case("override-wrong-type", TINY, ["scale.micro_batch=abc"], "scale.micro_batch", "'abc'"),
    _case("override-float-for-int", TINY, ["scale.micro_batch=8.5"], "scale.micro_batch",
          "integer"),
    _case("override-bool-not-bool", TINY, ["data.streaming=maybe"], "data.streaming",
          "true or false"),
    _case("override-alias-not-bool", TINY, ["scale.bf16=maybe"], "scale.bf16", "true or false"),
    _case("override-fp16-and-bf16", TINY, ["scale.fp16=true", "scale.bf16=true"], "scale.bf16",
          "fp16"),
    _case("override-alias-contradicts-precision", TINY, ["scale.precision=fp16", "scale.bf16=on"],
          "scale.bf16", "fp16"),
    _case("override-dict-not-json", TINY, ["model.config_overrides=layers:2"],
          "model.config_overrides", "mapping"),
    _case("override-value-looks-like-markup", TINY, ["scale.micro_batch=[/x]"],
          "scale.micro_batch", "'[/x]'"),
    _case("global-batch-not-micro-x-accum-x-world", TINY,
          ["scale.global_batch=100", "scale.grad_accum=2"], "scale.global_batch", "= 64"),
    _case("global-batch-not-divisible", TINY, ["scale.global_batch=100"], "scale.global_batch",
          "multiple of 32"),
    _case("global-batch-larger-than-data", TINY, ["scale.global_batch=4032"],
          "scale.global_batch", "4000"),
    _case("micro-batch-zero", TINY, ["scale.micro_batch=0"], "scale.micro_batch", "1 or more"),
    _case("nodes-negative", TINY, ["scale.nodes=-1"], "scale.nodes", "1 or more"),
    _case("nproc-flag-zero", TINY, ["--nproc-per-node", "0"], "scale.procs_per_node",
          "1 or more"),
    _case("grad-accum-zero", TINY, ["scale.grad_accum=0"], "scale.grad_accum", "1 or more"),
    _case("max-length-zero", TINY, ["data.max_length=0"], "data.max_length", "1 or more"),
    _case("max-length-too-short", TINY, ["data.max_length=4"], "data.max_length", "8 or more"),
    _case("eval-micro-batch-zero", TINY, ["eval.micro_batch=0"], "eval.micro_batch"),
    _case("missing-train-file", TINY, ["data.train=/nonexistent.jsonl"], "data.train",
          "does not exist"),
    _case("missing-eval-file", TINY, ["data.eval=/nonexistent_eval.jsonl"], "data.eval",
          "does not exist"),
    _case("label-column-absent", TINY, ["data.label_column=topic"], "data.label_column",
          "'topic'"),
    _case("text-column-absent", TINY, ["data.text_column=body"], "data.text_column", "'body'"),
    _case("text-pair-same-as-text", TINY, ["data.text_pair_column=text"],
          "data.text_pair_column"),
    _case("unknown-strategy", TINY, ["scale.strategy=zero4"], "scale.strategy", "zero3"),
    _case("unknown-precision", TINY, ["scale.precision=fp8"], "scale.precision", "bf16"),
    _case("unknown-scheduler", TINY, ["optim.scheduler=step"], "optim.scheduler", "cosine"),
    _case("max-steps-and-epochs", TINY, ["run.max_steps=10"], "run.max_steps", "run.epochs"),
    _case("neither-max-steps-nor-epochs", TINY, ["run.epochs=none"], "run.max_steps",
          "run.epochs"),
    _case("labels-one", TINY, ["task.labels=World"], "task.labels", "two"),
    _case("labels-duplicated", TINY, ["task.labels=World,Sports,World"], "task.labels", "twice"),
    _case("lr-too-large", TINY, ["optim.lr=2"], "optim.lr", "between 0 and 1"),
    _case("lr-zero", TINY, ["optim.lr=0"], "optim.lr", "between 0 and 1"),
    _case("lr-negative", TINY, ["optim.lr=-3e-5"], "optim.lr", "between 0 and 1"),
    _case("warmup-ratio-one", TINY, ["optim.warmup_ratio=1"], "optim.warmup_ratio"),
    _case("betas-one-value", TINY, ["optim.betas=0.9"], "optim.betas", "two numbers"),
    _case("dropout-out-of-range", TINY, ["model.dropout=1.5"], "model.dropout"),
    _case("weight-decay-negative", TINY, ["optim.weight_decay=-0.1"], "optim.weight_decay"),
    # nan passes `< 0` and `== 0`; nan/inf would reach plan.json/deepspeed.json as invalid JSON.
    _case("max-grad-norm-nan", TINY, ["optim.max_grad_norm=nan"], "optim.max_grad_norm", "finite"),
    _case("eps-inf", TINY, ["optim.eps=inf"], "optim.eps", "finite"),
    _case("train-path-without-extension", TINY, ["data.train=/nonexistent"], "data.train",
          "does not exist"),
    _case("train-file-of-unknown-type", TINY, ["data.train=./README.md"], "data.train",
          ".jsonl"),
    _case("run-name-empty", TINY, ["run.name="], "run.name"),
    _case("global-batch-larger-than-data", TINY, ["scale.global_batch=8192"],
          "scale.global_batch", "lower scale.global_batch"),
]


@pytest.mark.parametrize("recipe, overrides, field, contains", CASES)
def test_bad_recipe_is_one_line_exit_2_and_writes_nothing(render, tmp_path, recipe, overrides,
                                                          field, contains):
    if isinstance(recipe, tuple) and recipe[0] == "file":
        path = tmp_path / "bad_recipe.py"
        path.write_text(recipe[1])
    elif isinstance(recipe, tuple):
        path = Path(recipe[1])
    else:
        path = recipe
    out = tmp_path / "plan"
    _assert_refused(render(path, *overrides, out=out), out, field, contains)


def _assert_refused(proc, out: Path, field: str, contains) -> None:
    """Exit 2, one line on stderr naming the field and the fix, no traceback, nothing written."""
    shown = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix:" in lines[0], shown
    # The dotted field stands on its own, followed by a colon: `... scale.micro_bach: ...`.
    assert re.search(rf"(^|\s){re.escape(field)}: ", lines[0]), shown
    assert all(text in lines[0] for text in contains), shown
    assert not proc.stdout.strip(), shown
    assert not out.exists() or not any(out.iterdir()), shown


def test_fix_suggests_the_misspelled_field(render, tmp_path):
    path = tmp_path / "typo.py"
    path.write_text(recipe_source(scale="ScaleConfig(micro_bach=4)"))
    proc = render(path, out=tmp_path / "plan")
    assert "did you mean 'micro_batch'?" in proc.stderr
    # ...and says where in the file: `<path>:<line>: scale.micro_bach: ...`
    assert f"{path}:" in proc.stderr


def test_valid_override_renders_and_is_explained_as_cli_override(render, tmp_path):
    out = tmp_path / "plan"
    proc = render(TINY, "optim.lr=3e-5", "scale.micro_batch=16", "--explain", out=out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not proc.stderr.strip(), proc.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["recipe"]["optim"]["lr"] == 3e-5
    assert plan["recipe"]["scale"]["micro_batch"] == 16
    assert plan["micro_batch"] == 16
    assert plan["global_batch"] == 16  # 16 x accum 1 x 1 process
    assert plan["sources"]["optim.lr"] == "CLI override"
    assert plan["sources"]["scale.micro_batch"] == "CLI override"
    assert plan["sources"]["optim.weight_decay"] == "recipe file"
    rows = {line.split()[1]: line for line in proc.stdout.splitlines()
            if len(line.split()) > 2 and line.split()[1] in ("optim.lr", "scale.micro_batch",
                                                             "optim.weight_decay")}
    assert "3e-05" in rows["optim.lr"] and "CLI override" in rows["optim.lr"], proc.stdout
    assert "16" in rows["scale.micro_batch"], proc.stdout
    assert "CLI override" in rows["scale.micro_batch"], proc.stdout
    assert "recipe file" in rows["optim.weight_decay"], proc.stdout


def test_render_does_not_import_torch(tmp_path):
    """`render` is a planning step: no torch, transformers, accelerate or DeepSpeed import.
    (HF datasets reads local files for the row checks, so the engine's rows are the ones checked.)"""
    heavy = ("torch", "transformers", "deepspeed", "accelerate")
    code = (
        "import sys\n"
        "from launcher.cli import main\n"
        f"rc = main(['render', {str(TINY)!r}, '--nproc-per-node', '2', 'scale.strategy=zero2',\n"
        f"           '--out', {str(tmp_path / 'plan')!r}, '--explain'])\n"
        f"print('RC', rc)\n"
        f"print('HEAVY', sorted(m for m in {heavy!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert "RC 0" in proc.stdout, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


@pytest.mark.parametrize("how", ["in-process", "subprocess"])
def test_bad_flag_is_one_line_exit_2(render, tmp_path, how):
    proc = (render if how == "in-process" else _render)(TINY, "--nodes", "abc",
                                                          out=tmp_path / "plan")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--nodes" in lines[0] and "Fix:" in lines[0], proc.stderr


@pytest.mark.parametrize("recipe, overrides, field, contains", [
    c for c in CASES if c.id in ("file-raises", "label-column-absent")])
def test_refusal_in_a_real_process_is_one_line_exit_2(tmp_path, recipe, overrides, field,
                                                       contains):
    """End to end, as a user runs it: `python -m launcher render` exits 2 with one line and no
    traceback (an error raised while importing the recipe; one found reading the data)."""
    if isinstance(recipe, tuple):
        recipe = tmp_path / "bad_recipe.py"
        recipe.write_text(CASES[[c.id for c in CASES].index("file-raises")].values[0][1])
    out = tmp_path / "plan"
    _assert_refused(_render(recipe, *overrides, out=out), out, field, contains)
