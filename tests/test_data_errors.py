"""Labels the head cannot hold stop the run before training, naming the example and field:
refusals, so the CLI runs in-process (`cli`). (Rows with empty text are counted, reported and
skipped: test_data_formats.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, TINY


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _news(n: int) -> list[dict]:
    lines = (REPO / "data/tiny_news/train.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def _fails_before_training(proc, out: Path, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert not out.exists(), "nothing may be written for a recipe that cannot train"


def test_label_id_beyond_the_labels_names_example_and_field(tmp_path, cli):
    rows = _news(200)
    rows[137]["label"] = 7
    train = _jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    proc = cli("run", TINY, f"data.train={train}", f"run.output_dir={out}")
    _fails_before_training(proc, out, "data.label_column", "example 137", "(id tn-00137)",
                           "label 7", "train.jsonl")


def test_label_name_not_in_labels(tmp_path, cli):
    rows = _news(200)
    rows[3]["label"] = "Weather"
    evaluation = _jsonl(tmp_path / "eval.jsonl", rows)
    out = tmp_path / "run"
    proc = cli("run", TINY, f"data.eval={evaluation}", f"run.output_dir={out}")
    _fails_before_training(proc, out, "data.label_column", "example 3", "'Weather'", "eval.jsonl")


NER = ["task.type=token_classification", "task.labels=O,B-PER,I-PER,B-LOC,I-LOC"]


def _ner_rows(n: int) -> list[dict]:
    return [{"id": f"s{i}", "tokens": ["mary", "lives", "in", "paris"],
             "ner_tags": ["B-PER", "O", "O", "B-LOC"]} for i in range(n)]


def test_tag_outside_the_tag_set(tmp_path, cli):
    rows = _ner_rows(100)
    rows[42]["ner_tags"][2] = "B-ORG"
    train = _jsonl(tmp_path / "ner.jsonl", rows)
    out = tmp_path / "run"
    proc = cli("run", TINY, *NER, f"data.train={train}", f"data.eval={train}",
                    f"run.output_dir={out}")
    _fails_before_training(proc, out, "data.label_column", "example 42", "(id s42)", "'B-ORG'",
                           "word 2 ('in')", "task.labels")


def test_tags_and_words_of_different_length(tmp_path, cli):
    rows = _ner_rows(100)
    rows[5]["ner_tags"] = rows[5]["ner_tags"][:3]
    train = _jsonl(tmp_path / "ner.jsonl", rows)
    out = tmp_path / "run"
    proc = cli("run", TINY, *NER, f"data.train={train}", f"data.eval={train}",
                    f"run.output_dir={out}")
    _fails_before_training(proc, out, "data.label_column", "example 5", "3 tags for 4 words")


QA = ["task.type=question_answering", "task.labels=", "data.max_length=64"]


def _qa_rows(n: int) -> list[dict]:
    context = "the owner of the boat is marta ."
    return [{"id": f"q{i}", "question": "who owns the boat ?", "context": context,
             "answers": {"text": ["marta"], "answer_start": [context.index("marta")]}}
            for i in range(n)]


def test_answer_outside_the_context(tmp_path, cli):
    rows = _qa_rows(100)
    rows[61]["answers"]["answer_start"] = [40]
    train = _jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "run"
    proc = cli("run", TINY, *QA, f"data.train={train}", f"data.eval={train}",
                    f"run.output_dir={out}")
    _fails_before_training(proc, out, "data.label_column", "example 61", "(id q61)",
                           "outside the context")


def test_answer_text_not_at_its_offset(tmp_path, cli):
    rows = _qa_rows(100)
    rows[8]["answers"]["answer_start"] = [0]
    train = _jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "run"
    proc = cli("run", TINY, *QA, f"data.train={train}", f"data.eval={train}",
                    f"run.output_dir={out}")
    _fails_before_training(proc, out, "data.label_column", "example 8", "does not match")
