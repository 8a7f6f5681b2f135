"""Every row of a local data file is read before launch: a malformed line is one line naming
the file, the line and what is wrong (exit 2, nothing written, no traceback), for `run`,
`eval --data` and `predict --file` alike. In-process (`launcher.cli.main`)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest

from launcher import cli, sources

from conftest import REPO, TINY

ROWS = [json.loads(line) for line in
        (REPO / "data/tiny_news/train.jsonl").read_text().splitlines()[:300]]


def _main(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _lines() -> list[str]:
    return [json.dumps(r) for r in ROWS]


def _csv(path: Path, edit=None) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "text", "label"])
    for r in ROWS:
        w.writerow([r["id"], r["text"], r["label"]])
    lines = buf.getvalue().splitlines()
    if edit:
        edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _parquet(path: Path) -> Path:
    import pandas as pd
    pd.DataFrame(ROWS).to_parquet(path)
    return path


def _bad(kind: str, tmp: Path) -> tuple[Path, str]:
    """A damaged copy of 300 tiny_news rows, and what the error must say."""
    lines = _lines()
    if kind == "truncated-json":
        lines[180] = lines[180][:40]
        return _jsonl(tmp / "train.jsonl", lines), "train.jsonl line 181: is not valid JSON"
    if kind == "not-an-object":
        lines[9] = '["tn-x", "text", 1]'
        return _jsonl(tmp / "train.jsonl", lines), "line 10: is a list, not an object"
    if kind == "not-utf8":
        path = _jsonl(tmp / "train.jsonl", lines)
        data = path.read_bytes().split(b"\n")
        data[41] = data[41][:20] + b"\xff\xfe" + data[41][20:]
        path.write_bytes(b"\n".join(data))
        return path, "line 42: is not UTF-8 text (byte 0xff"
    if kind == "csv-extra-field":
        return (_csv(tmp / "train.csv", lambda ls: ls.__setitem__(51, ls[51] + ",oops")),
                "train.csv line 52: has 4 fields but the header has 3 (id, text, label)")
    if kind == "csv-missing-field":
        return (_csv(tmp / "train.csv", lambda ls: ls.__setitem__(7, ls[7].rsplit(",", 1)[0])),
                "train.csv line 8: has 2 fields but the header has 3")
    if kind == "csv-open-quote":
        return (_csv(tmp / "train.csv", lambda ls: ls.__setitem__(99, 'tn-x,"no end,1')),
                "train.csv line 100: is not valid CSV")
    if kind == "parquet-cut":
        path = _parquet(tmp / "train.parquet")
        path.write_bytes(path.read_bytes()[:-50])
        return path, "train.parquet: is not a readable parquet file"
    raise AssertionError(kind)


KINDS = ["truncated-json", "not-an-object", "not-utf8", "csv-extra-field", "csv-missing-field",
         "csv-open-quote", "parquet-cut"]


def _one_line_refusal(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("kind", KINDS)
def test_run_names_the_malformed_line(tmp_path, kind):
    path, message = _bad(kind, tmp_path)
    out = tmp_path / "run"
    rc, _, err = _main("run", TINY, f"data.train={path}", "--dry-run", f"run.output_dir={out}")
    _one_line_refusal(rc, err, "data.train:", message)
    assert not out.exists()


def test_eval_file_and_a_line_far_down_are_checked_too(tmp_path):
    """data.eval is read to its end even with eval.max_examples (rows past the first N)."""
    lines = _lines()
    lines[250] = "{not json"
    path = _jsonl(tmp_path / "eval.jsonl", lines)
    rc, _, err = _main("run", TINY, f"data.eval={path}", "eval.max_examples=100", "--dry-run",
                       f"run.output_dir={tmp_path / 'run'}")
    _one_line_refusal(rc, err, "data.eval:", "eval.jsonl line 251: is not valid JSON")


def test_well_formed_csv_parquet_and_bom_plan(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "".join(line + "\n\n" for line in _lines()).encode())
    for path in (_csv(tmp_path / "ok.csv"), _parquet(tmp_path / "ok.parquet"), bom):
        rc, _, err = _main("run", TINY, f"data.train={path}", "--dry-run",
                           f"run.output_dir={tmp_path / path.stem}")
        assert rc == 0, err


def test_json_rows_are_read_as_a_stream(tmp_path):
    """A row is handed on before the rest of the file is read: large files stay out of memory."""
    lines = _lines()
    lines[1] = "{broken"
    rows = sources.read_rows(sources.resolve(str(_jsonl(tmp_path / "t.jsonl", lines)),
                                             config=None, split="train"))
    assert next(rows) == ROWS[0]
    with pytest.raises(sources.BadData, match="line 2"):
        next(rows)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run directory as eval/predict find it (a plan and final/), without training: both
    commands must refuse the file before loading any model."""
    root = tmp_path_factory.mktemp("trained") / "run"
    rc, _, err = _main("render", TINY, "--out", root / "plan")
    assert rc == 0, err
    (root / "final").mkdir()
    return root


@pytest.mark.parametrize("kind", ["truncated-json", "csv-extra-field", "parquet-cut"])
def test_eval_data_and_predict_file_name_the_malformed_line(tmp_path, finished_run, kind):
    path, message = _bad(kind, tmp_path)
    rc, _, err = _main("eval", finished_run, "--data", path)
    _one_line_refusal(rc, err, "--data:", message)
    rc, out, err = _main("predict", finished_run, "--file", path)
    _one_line_refusal(rc, err, "--file:", message)
    assert not out.strip()
    assert not (finished_run / "eval").exists()


def test_predict_file_needs_the_text_column_only(tmp_path, finished_run):
    no_text = _jsonl(tmp_path / "q.jsonl", [json.dumps({"headline": "x"})])
    rc, _, err = _main("predict", finished_run, "--file", no_text)
    _one_line_refusal(rc, err, "--file:", "has no column 'text'")
