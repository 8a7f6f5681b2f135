"""Local CSV and parquet files train like JSONL, with labels given by name or by id; rows with
empty text are counted, reported and skipped. The two training runs are planned by
`launcher run --dry-run` in pytest's process and trained in turn in one process (module
fixture `runs`, together.in_turn); a mistake is refused in-process, before any process would
start."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, TINY
from together import finish_in_turn, in_turn, plan_run
from launcher.run_dir import RunDir

LABELS = ("World", "Sports", "Business", "Sci/Tech")


def _rows(name: str, n: int) -> list[dict]:
    lines = (REPO / "data/tiny_news" / name).read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def _jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv_train(path):
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text", "topic"])
        writer.writeheader()
        for r in _rows("train.jsonl", 300):
            writer.writerow({"id": r["id"], "text": r["text"], "topic": LABELS[r["label"]]})
    return path


def _empty_rows() -> list[dict]:
    rows = _rows("train.jsonl", 400)
    for i in (0, 17, 255):
        rows[i]["text"] = "   " if i == 17 else ""
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A CSV train file (labels by name in `topic`) with a parquet eval file, and a JSONL
    file with empty rows: both trained one epoch at once."""
    tmp = tmp_path_factory.mktemp("formats")
    train = _csv_train(tmp / "train.csv")
    evaluation = tmp / "eval.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{**r, "topic": LABELS[r.pop("label")]} for r in _rows("eval.jsonl", 101)]), evaluation)
    rows = _empty_rows()
    empty_train = _jsonl(tmp / "train.jsonl", rows)
    empty_eval = _jsonl(tmp / "eval.jsonl", rows[:101])
    out = {"csv": RunDir(tmp / "csv-run"), "empty": RunDir(tmp / "empty-run")}
    said = {
        "csv": plan_run(TINY, f"data.train={train}", f"data.eval={evaluation}",
                        "data.label_column=topic", f"run.output_dir={out['csv'].root}",
                        "run.epochs=1", "scale.micro_batch=16"),
        "empty": plan_run(TINY, f"data.train={empty_train}", f"data.eval={empty_eval}",
                          f"run.output_dir={out['empty'].root}", "run.epochs=1",
                          "run.trace_examples=true")}
    finish_in_turn(in_turn(*(rd.plan for rd in out.values())))
    return {name: (out[name], said[name]) for name in out}


def test_csv_train_with_label_names_and_parquet_eval(runs):
    rd, _ = runs["csv"]
    summary = json.loads(rd.summary.read_text())
    assert summary["steps"] == 300 // 16
    assert summary["eval"]["examples"] == 101


def test_eval_file_without_the_label_column_is_refused_naming_it(tmp_path, cli):
    train = _csv_train(tmp_path / "train.csv")
    evaluation = tmp_path / "eval.parquet"
    pq.write_table(pa.Table.from_pylist(_rows("eval.jsonl", 101)), evaluation)
    out = tmp_path / "run"
    proc = cli("run", TINY, f"data.train={train}", f"data.eval={evaluation}",
               # parquet has `label`, the CSV `topic`: one label column for both files
               "data.label_column=topic", f"run.output_dir={out}", "run.epochs=1")
    # The eval file has no `topic` column: caught before launch, naming the file.
    assert proc.returncode == 2 and "eval.parquet" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_empty_rows_are_counted_reported_and_skipped(runs):
    rd, said = runs["empty"]  # what `launcher run` said before its launch
    assert "data.train: 3 of 400 rows have empty text and are skipped (examples 0, 17, 255)" \
        in said
    assert "data.eval: 2 of 101 rows" in said
    plan = json.loads((rd.plan / "plan.json").read_text())
    assert plan["train_examples"] == 397 and plan["steps_per_epoch"] == 397 // 32
    seen = set((rd.trace / "rank0.txt").read_text().split())
    assert not seen & {"tn-00000", "tn-00017", "tn-00255"}
    metrics = json.loads((rd.eval / "step-0000012" / "metrics.json").read_text())
    assert metrics["examples"] == 99 and metrics["skipped_empty"] == 2
