"""Local CSV and parquet files train like JSONL, with labels given by name or by id."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import REPO, TINY, launcher

LABELS = ("World", "Sports", "Business", "Sci/Tech")


def _rows(name: str, n: int) -> list[dict]:
    lines = (REPO / "data/tiny_news" / name).read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def test_csv_train_with_label_names_and_parquet_eval(tmp_path):
    train = tmp_path / "train.csv"
    with train.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text", "topic"])
        writer.writeheader()
        for r in _rows("train.jsonl", 300):
            writer.writerow({"id": r["id"], "text": r["text"], "topic": LABELS[r["label"]]})
    evaluation = tmp_path / "eval.parquet"
    pq.write_table(pa.Table.from_pylist(_rows("eval.jsonl", 101)), evaluation)

    out = tmp_path / "run"
    proc = launcher("run", TINY, f"data.train={train}", f"data.eval={evaluation}",
                    # parquet has `label`, the CSV `topic`: one label column for both files
                    "data.label_column=topic", f"run.output_dir={out}", "run.epochs=1")
    # The eval file has no `topic` column: caught before launch, naming the file.
    assert proc.returncode == 2 and "eval.parquet" in proc.stderr

    pq.write_table(pa.Table.from_pylist(
        [{**r, "topic": LABELS[r.pop("label")]} for r in _rows("eval.jsonl", 101)]), evaluation)
    proc = launcher("run", TINY, f"data.train={train}", f"data.eval={evaluation}",
                    "data.label_column=topic", f"run.output_dir={out}", "run.epochs=1",
                    "scale.micro_batch=16")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 300 // 16
    assert summary["eval"]["examples"] == 101
