"""Fuzzing the planning path: seeded mutations of valid recipes, overrides and data files.

Every case runs `launcher run RECIPE ... --dry-run` in-process (`launcher.cli.main`), as a
user would, and must end in success (exit 0) or in one line `error: ...` with exit 2: never
in a traceback. A case that ever failed is kept in REGRESSIONS, run before the random ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
import traceback
from dataclasses import fields
from pathlib import Path

import pytest

from launcher import cli
from launcher.recipe.schema import SECTIONS

from conftest import REPO

SEED = 1616
CASES = 300
RECIPES = ("tiny_news", "tiny_nli", "tiny_ner", "tiny_qa", "tiny_multilabel")
KEYS = [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)]

# Values that have broken parsers before: types, ranges, markup, shell, JSON, unicode.
OVERRIDE_VALUES = [
    "", " ", "0", "-1", "1", "2", "7", "3.5", "1e-3", "1e309", "-1e309", "nan", "inf", "none",
    "null", "true", "false", "abc", "[/x]", "[b]", "a,b", "1,2,3", "0.9,0.98", ",", '{"a": 1}',
    '{"num_hidden_layers": 0}', '{"hidden_size": -1}', '{"vocab_size": "x"}', "{", "[1]",
    "'", '"', "$(touch PWNED)", "`id`", "a\nb", "é✓", "9" * 30, "balanced", "zero3", "fsdp",
    "zero3_offload", "bf16", "fp16", "slurm", "local", "/nonexistent/train.jsonl",
    "no_such_dataset", "bert-base-uncasd", "../x", "~", "-", "0.99999", "1e10", "2147483648",
    "question_answering", "token_classification", "multi_label_classification", "linear",
    "reduce-overhead", "A100-40GB", "H100", "O,B-PER,I-PER", "World,World", "World",
    '{"hidden_size": "x"}', '{"num_attention_heads": 1.5}', '{"intermediate_size": null}',
    '{"max_position_embeddings": true}', "T4-16GB",
]
COMMANDS = ["run", "run", "run", "run", "render", "plan-memory"]
MODEL_EDITS = ["config_truncated", "config_list", "config_string_size", "no_config",
               "no_vocab", "weights_missing"]
RECIPE_VALUES = [
    "None", "0", "-1", "1e309", "float('nan')", "''", "'  '", "'[/x]'", "()", "('a',)", "{}",
    "{'a': 1}", "True", "'$(touch PWNED)'", "[1, 2]", "10**12", "'x' * 300", "b'x'", "1.5",
    "object()", "('World', 'World')", "{'num_hidden_layers': 'two'}", "'zero2'", "'nope'",
]
JSON_VALUES = [None, 0, -1, 7, 1.5, 10**20, "", " ", "x", "World", [], ["a"], [1, "b"], {},
               {"text": 1}, True, "O", ["O", "B-PER"], {"text": ["x"], "answer_start": ["0"]}]

# Every case that once ended in a traceback (found by this test, fixed since).
REGRESSIONS: list[dict] = [
    # The family table read a config.json that is a JSON list before the model check named it.
    {"recipe": "tiny_ner", "edit": None, "overrides": ["model.tokenizer=multi_label_classification",
     "scale.gpu=null"], "data": {"which": "eval", "kind": "csv_unterminated", "at": 395,
     "value": 2}, "command": "run", "model": "config_list"},
    # A value echoed back in an error held a newline: the "one line" was two.
    {"recipe": "tiny_ner", "edit": None, "overrides": ["eval.metric=a\nb"], "data": None},
    {"recipe": "tiny_ner", "edit": None, "overrides": ["scale.grad_accum=a\nb",
     "data.packing=1e-3", "task.class_weights=balanced"],
     "data": {"which": "train", "kind": "parquet_value", "at": 847, "value": 0}},
    {"recipe": "tiny_ner", "edit": None, "overrides": ["=1=a\nb"],
     "data": {"which": "eval", "kind": "value", "at": 212, "value": 4}},
    # The memory estimate multiplied a string from model.config_overrides (TypeError).
    {"recipe": "tiny_news", "edit": None, "data": None, "command": "run",
     "overrides": ['model.config_overrides={"hidden_size": "x"}', "scale.gpu=A100-40GB"]},
    {"recipe": "tiny_news", "edit": None, "data": None, "command": "plan-memory",
     "overrides": ['model.config_overrides={"num_attention_heads": 1.5}']},
]


def _source(recipe: str) -> str:
    text = (REPO / "recipes" / f"{recipe}.py").read_text()
    return text.replace("Path(__file__).resolve().parent.parent", f"Path({str(REPO)!r})")


def _recipe_data(recipe: str) -> tuple[Path, Path]:
    d = REPO / "data" / recipe
    return d / "train.jsonl", d / "eval.jsonl"


def generate(rng: random.Random) -> dict:
    """One case: a recipe, an optional edit of its text, overrides, an optional data edit."""
    case: dict = {"recipe": rng.choice(RECIPES), "edit": None, "overrides": [], "data": None,
                  "command": rng.choice(COMMANDS), "model": None}
    if rng.random() < 0.1:
        case["model"] = rng.choice(MODEL_EDITS)
    if rng.random() < 0.15:
        case["overrides"].append(f"scale.gpu={rng.choice(['A100-40GB', 'T4-16GB'])}")
    if rng.random() < 0.35:
        kind = rng.choice(["value", "value", "value", "drop_line", "unknown_kw"])
        case["edit"] = {"kind": kind, "at": rng.randrange(1000),
                        "value": rng.choice(RECIPE_VALUES)}
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        key = rng.choice(KEYS) if rng.random() < 0.95 else rng.choice(["optim", "x.y", "=1"])
        case["overrides"].append(f"{key}={rng.choice(OVERRIDE_VALUES)}")
    if rng.random() < 0.45:
        case["data"] = {"which": rng.choice(["train", "train", "eval"]),
                        "kind": rng.choice(DATA_KINDS), "at": rng.randrange(1000),
                        "value": rng.randrange(len(JSON_VALUES))}
    return case


def _edit_recipe(text: str, edit: dict) -> str:
    if edit["kind"] == "drop_line":
        lines = text.splitlines()
        lines.pop(edit["at"] % len(lines))
        return "\n".join(lines) + "\n"
    spots = list(re.finditer(r"\b([a-z_]+)=([^,\n()]+|\([^()]*\))", text))
    spot = spots[edit["at"] % len(spots)]
    if edit["kind"] == "unknown_kw":
        return text[:spot.start()] + f"{spot.group(1)}x={spot.group(2)}" + text[spot.end():]
    return text[:spot.start(2)] + edit["value"] + text[spot.end(2):]


def _rows(path: Path, n: int = 150) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def _jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _write_data(src: Path, out: Path, spec: dict) -> Path:
    """A copy of the first rows of `src`, damaged as `spec` says, in some file format."""
    rows, kind, at = _rows(src), spec["kind"], spec["at"]
    i = at % len(rows)
    value = JSON_VALUES[spec["value"]]
    if kind in ("csv_ok", "csv_short_row", "csv_long_row", "csv_unterminated"):
        import csv
        keys = list(rows[0])
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(keys)
        for r in rows:
            w.writerow([json.dumps(r[k]) if isinstance(r[k], (list, dict)) else r[k]
                        for k in keys])
        lines = buf.getvalue().splitlines()
        j = 1 + i
        if kind == "csv_short_row":
            lines[j] = lines[j].rsplit(",", 1)[0]
        elif kind == "csv_long_row":
            lines[j] += ",extra"
        elif kind == "csv_unterminated":
            lines[j] = '"' + lines[j]
        path = out.with_suffix(".csv")
        path.write_text("\n".join(lines) + "\n")
        return path
    if kind in ("parquet_ok", "parquet_truncated", "parquet_value"):
        import pandas as pd
        if kind == "parquet_value":
            rows[i][list(rows[i])[at % len(rows[i])]] = value
        path = out.with_suffix(".parquet")
        try:
            pd.DataFrame(rows).to_parquet(path)
        except Exception:  # pandas cannot write that mix of types: a file that is no parquet
            path.write_bytes(b"PAR1 not really")
        if kind == "parquet_truncated":
            path.write_bytes(path.read_bytes()[: max(8, len(path.read_bytes()) * at // 1000)])
        return path
    text = _jsonl(rows)
    lines = text.splitlines(keepends=True)
    if kind == "bad_json":
        lines[i] = lines[i][: len(lines[i]) // 2] + "\n"
    elif kind == "not_object":
        lines[i] = json.dumps(value if not isinstance(value, dict) else [value]) + "\n"
    elif kind == "invalid_utf8":
        lines[i] = lines[i][:5] + "\udcff" + lines[i][5:]
    elif kind == "empty":
        lines = []
    elif kind == "blank_lines":
        lines.insert(i, "\n   \n")
    elif kind == "value":
        row = rows[i]
        row[list(row)[at % len(row)]] = value
        lines[i] = json.dumps(row) + "\n"
    elif kind == "drop_key":
        row = rows[i]
        row.pop(list(row)[at % len(row)])
        lines[i] = json.dumps(row) + "\n"
    elif kind == "bom":
        lines[0] = "\ufeff" + lines[0]
    elif kind == "array":
        lines = [json.dumps(rows)]
    elif kind == "few_rows":
        lines = lines[: at % 5]
    path = out.with_suffix(".jsonl")
    path.write_bytes("".join(lines).encode("utf-8", "surrogateescape"))
    return path


DATA_KINDS = ["bad_json", "not_object", "invalid_utf8", "empty", "blank_lines", "value",
              "value", "value", "drop_key", "bom", "array", "few_rows", "csv_ok",
              "csv_short_row", "csv_long_row", "csv_unterminated", "parquet_ok",
              "parquet_truncated", "parquet_value"]


def _model_dir(tmp: Path, edit: str) -> Path:
    """A copy of the shipped tiny model directory, damaged as `edit` says."""
    model = tmp / "model"
    shutil.copytree(REPO / "models" / "tiny-bert", model)
    config = model / "config.json"
    if edit == "config_truncated":
        config.write_text(config.read_text()[:30])
    elif edit == "config_list":
        config.write_text("[1, 2]")
    elif edit == "config_string_size":
        config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_size": "64"}))
    elif edit == "no_config":
        config.unlink()
    elif edit == "no_vocab":
        (model / "vocab.txt").unlink()
        (model / "tokenizer_config.json").unlink()
    return model


def run_case(case: dict, tmp: Path) -> tuple[int, str, str]:
    tmp.mkdir(parents=True)
    text = _source(case["recipe"])
    if case["edit"]:
        text = _edit_recipe(text, case["edit"])
    recipe = tmp / f"{case['recipe']}.py"
    recipe.write_text(text)
    command = case.get("command", "run")
    argv = [command, str(recipe), *case["overrides"]]
    if case.get("model"):
        pretrained = "true" if case["model"] == "weights_missing" else "false"
        argv += [f"model.name={_model_dir(tmp, case['model'])}", "model.tokenizer=none",
                 f"model.pretrained={pretrained}"]
    if case["data"]:
        train, evaluation = _recipe_data(case["recipe"])
        which = case["data"]["which"]
        path = _write_data(train if which == "train" else evaluation, tmp / which, case["data"])
        argv.append(f"data.{which}={path}")
    if command == "run":
        argv += ["--dry-run", f"run.output_dir={tmp / 'run'}"]
    elif command == "render":
        argv += ["--explain", "--out", str(tmp / "plan")]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exit_:  # argparse's own refusals
            rc = exit_.code
        except BaseException:
            return -1, out.getvalue(), traceback.format_exc()
    return rc, out.getvalue(), err.getvalue()


def _verdict(case: dict, rc: int, err: str) -> str | None:
    """None when the case ended as a user may see it end; else what went wrong."""
    if rc == 0:
        return None
    lines = err.strip().splitlines()
    if rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err:
        return None
    return f"{json.dumps(case)}\n  exit {rc}\n  " + "\n  ".join(err.strip().splitlines()[-12:])


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # recipes edited into odd Python
def test_fuzz_planning_never_ends_in_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED)
    cases = [*REGRESSIONS, *(generate(rng) for _ in range(CASES))]
    failures, outcomes = [], {"ok": 0, "refused": 0}
    for n, case in enumerate(cases):
        rc, _, err = run_case(case, tmp_path / f"case{n}")
        bad = _verdict(case, rc, err)
        if bad:
            failures.append(bad)
        else:
            outcomes["ok" if rc == 0 else "refused"] += 1
    assert not failures, f"{len(failures)} of {len(cases)} cases crashed:\n" + "\n".join(
        failures[:40])
    # The mutations reach both ends: plans that pass and mistakes that are caught.
    assert outcomes["ok"] > 20 and outcomes["refused"] > 100, outcomes
