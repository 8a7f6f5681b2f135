"""Every task's tiny twin trains on 2 CPU ranks and beats a trivial baseline; evaluation gives
byte-identical results at world sizes 1, 2 (and 3 for QA); eval and predict work on the
trained run.

QA metrics are the metrics of what `predict` answers: at any task.null_threshold, the
project's SQuAD v2 scorer run on predict's output gives metrics.json's numbers. And predict's
output is the input row with `id` and `predicted` added, the gold answers left in place."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import task_runs
from conftest import REPO
from launcher.cli import main
from launcher.engine.eval_main import run_eval
from launcher.metrics.squad_v2 import squad_v2_report
from launcher.run_dir import RunDir


EARLY = task_runs.EARLY  # the task runs, started with the session (conftest.py)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (run dir, stdout): the four twins, trained once a session (tests/task_runs.py)."""
    return task_runs.trained(tmp_path_factory).__getitem__


def _eval_rows(name: str) -> list[dict]:
    path = REPO / "data" / f"tiny_{name}" / "eval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _final_metrics(rd: RunDir) -> dict:
    return json.loads(sorted(rd.eval.glob("step-*"))[-1].joinpath("metrics.json").read_text())


def test_nli_pairs_beat_the_majority_class(trained):
    rd, stdout = trained("nli")
    gold = Counter(r["label"] for r in _eval_rows("nli"))
    majority = max(gold.values()) / sum(gold.values())
    metrics = _final_metrics(rd)
    assert metrics["examples"] == 1001
    assert metrics["accuracy"] > majority + 0.25, (metrics["accuracy"], majority)
    assert metrics["macro_f1"] > 0.5  # majority class: about 0.17
    # What a person reads after the run: per-class table, confusion matrix, worst mistakes.
    assert "Per class (eval)" in stdout and "contradiction" in stdout
    out = sorted(rd.eval.glob("step-*"))[-1]
    assert (out / "confusion_matrix.png").stat().st_size > 5000
    assert sum(map(sum, metrics["confusion_matrix"])) == 1001
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert errors, "a model at this accuracy makes some mistakes"
    assert len(errors) == min(200, round((1 - metrics["accuracy"]) * 1001))
    assert [e["confidence"] for e in errors] == sorted((e["confidence"] for e in errors), reverse=True)
    first = errors[0]
    assert first["gold"] != first["predicted"] and first["text"] and first["hypothesis"]


def test_multilabel_beats_predicting_the_most_frequent_tag(trained):
    rd, stdout = trained("multilabel")
    rows = _eval_rows("multilabel")
    top = Counter(t for r in rows for t in r["labels"]).most_common(1)[0]
    # Always predicting the most frequent tag: precision top/rows, recall top/all tags.
    tags = sum(len(r["labels"]) for r in rows)
    p, r = top[1] / len(rows), top[1] / tags
    baseline = 2 * p * r / (p + r)
    metrics = _final_metrics(rd)
    assert metrics["micro_f1"] > baseline + 0.25, (metrics["micro_f1"], baseline)
    assert set(metrics["per_label"]) == {"politics", "sports", "business", "tech", "health"}
    assert "Per label" in stdout


def test_ner_beats_all_o(trained):
    rd, stdout = trained("ner")
    metrics = _final_metrics(rd)
    # All-O predicts no entity: entity F1 0.
    assert metrics["f1"] > 0.6, metrics
    assert {"PER", "LOC", "ORG", "MISC"} <= set(metrics["per_entity"])
    assert "Per entity type" in stdout


def test_qa_beats_always_null(trained):
    rd, stdout = trained("qa")
    rows = _eval_rows("qa")
    no_answer = sum(not r["answers"]["text"] for r in rows) / len(rows)
    metrics = _final_metrics(rd)
    assert metrics["f1"] > 100 * no_answer + 15, (metrics["f1"], 100 * no_answer)
    assert metrics["HasAns_total"] + metrics["NoAns_total"] == len(rows) == 601
    assert metrics["HasAns_f1"] > 30
    assert "SQuAD v2 (eval)" in stdout


WORLD_EVAL = ("nli", "ner", "qa")
AT_3 = task_runs.AT_3  # also under torchrun at world size 3, right after training


def _written(out: Path) -> tuple[str, dict, str]:
    """What an evaluation wrote: metrics.json as text and as numbers less the step it names
    (the run's own evaluation names its step, `launcher eval` -1), and errors.jsonl."""
    text = (out / "metrics.json").read_text()
    metrics = json.loads(text)
    metrics.pop("step")
    return text, metrics, (out / "errors.jsonl").read_text()


@pytest.fixture(scope="module")
def at_world_3(tmp_path_factory):
    """`launcher eval RUN --nproc-per-node 3` of each run in AT_3, run after its training
    (tests/task_runs.py): name -> what it wrote (a copy, made before anything else wrote
    final-on-eval again)."""
    seen = {}
    for name, (proc, kept) in task_runs.at_world_3(tmp_path_factory).items():
        assert proc.returncode == 0, (name, proc.stdout[-3000:] + proc.stderr[-3000:])
        assert "(3 process(es))" in proc.stdout
        seen[name] = _written(kept)
    return seen


@pytest.mark.parametrize("name", WORLD_EVAL)
def test_eval_is_identical_at_world_sizes_1_2_3(trained, at_world_3, name, cli):
    """World size 2: the run's own evaluation at its last step, on its 2 training ranks (the
    same weights the export holds). World size 1: `launcher eval`'s default, which runs in the
    calling process (here, in this one, leaving nothing of torch.distributed initialised).
    World size 3 (QA, AT_3): `launcher eval --nproc-per-node 3` under torchrun (the fixture)."""
    import torch.distributed as dist

    rd, _ = trained(name)
    rows = len(_eval_rows(name))
    assert rows % 2 and rows % 3 and rows % 64, "the eval set must divide by neither"
    proc = cli("eval", rd.root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not dist.is_initialized()
    one = _written(rd.eval / "final-on-eval")
    two = _written(sorted(rd.eval.glob("step-*"))[-1])
    assert one[1]["examples"] == rows
    if name in AT_3:
        assert one == at_world_3[name]  # byte for byte
    assert two[1:] == one[1:]
    assert one[2], "errors.jsonl compared empty: the model is perfect, or nothing was written"


def test_eval_a_checkpoint_on_another_file(trained, tmp_path, cli):
    rd, _ = trained("nli")
    subset = tmp_path / "dev.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in _eval_rows("nli")[:77]))
    proc = cli("eval", rd.root, "--checkpoint", "best", "--data", subset)  # in this process
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 77 examples" in proc.stdout
    best = rd.best().name
    metrics = json.loads((rd.eval / f"{best}-on-dev" / "metrics.json").read_text())
    assert metrics["examples"] == 77 and metrics["step"] == int(best.split("-")[1])
    bad = cli("eval", rd.root, "--checkpoint", "step-9")  # a refusal: in this process
    assert bad.returncode == 2 and "--checkpoint" in bad.stderr and "Traceback" not in bad.stderr


def test_predict_prints_what_each_task_predicts(trained, cli):
    """`launcher predict` runs in the calling process (no torchrun): called here in-process."""
    rd, _ = trained("ner")
    row = _eval_rows("ner")[0]
    proc = cli("predict", rd.root, "--text", " ".join(row["tokens"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["predicted"] == row["ner_tags"] and isinstance(out["entities"], list)
    assert out["id"] == 1 and out["tokens"] == row["tokens"]  # not the text as an id

    rd, _ = trained("nli")
    row = _eval_rows("nli")[0]
    missing = cli("predict", rd.root, "--text", row["premise"])
    assert missing.returncode == 2 and "--pair" in missing.stderr
    proc = cli("predict", rd.root, "--text", row["premise"], "--pair", row["hypothesis"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["predicted"] in ("entailment", "neutral", "contradiction") and 0 < out["score"] <= 1

    rd, _ = trained("qa")
    rows = [r for r in _eval_rows("qa") if r["answers"]["text"]][:5]
    path = Path(rd.root) / "questions.jsonl"
    path.write_text("".join(json.dumps({k: r[k] for k in ("id", "question", "context")}) + "\n"
                            for r in rows))
    proc = cli("predict", rd.root, "--file", path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [a["id"] for a in answers] == [r["id"] for r in rows]
    right = sum(a["predicted"] == r["answers"]["text"][0] for a, r in zip(answers, rows))
    assert right >= 3


QA = REPO / "recipes" / "tiny_qa.py"
THRESHOLDS = (-5, 0, 5)


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    """tiny_qa as trained above (one run a session, tests/task_runs.py), and the first 200
    eval rows. The thresholds must decide differently on some of them (the
    test checks that they do)."""
    rd, _ = task_runs.trained(tmp_path_factory)["qa"]  # the same runs
    rows = (REPO / "data" / "tiny_qa" / "eval.jsonl").read_text().splitlines()[:200]
    data = tmp_path_factory.mktemp("qa") / "dev.jsonl"
    data.write_text("\n".join(rows) + "\n")
    return rd, data, [json.loads(r) for r in rows]


def test_eval_scores_what_predict_answers(qa_run, capsys):
    rd, data, rows = qa_run
    golds = [r["answers"]["text"] for r in rows]
    no_answers = []
    for t in THRESHOLDS:
        override = f"task.null_threshold={t}"
        capsys.readouterr()
        assert main(["predict", str(rd.root), "--file", str(data), override]) == 0
        out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        # the input row kept, gold answers included; id from the row's id column
        assert [o["id"] for o in out] == [r["id"] for r in rows]
        assert all(o["answers"] == r["answers"] and o["context"] == r["context"]
                   for o, r in zip(out, rows))
        preds = [o["predicted"] for o in out]
        run_eval(rd.root, None, str(data), f"t{t}", [override])
        metrics = json.loads((rd.eval / f"t{t}" / "metrics.json").read_text())
        ours = squad_v2_report(golds, preds)
        for key, value in ours.items():
            assert metrics[key] == pytest.approx(value, abs=1e-9), (t, key)
        no_answers.append(preds.count(""))
    # the thresholds decide differently on this model, so the comparison above means something
    assert no_answers == sorted(no_answers) and no_answers[0] < no_answers[-1], no_answers


def test_null_threshold_out_of_range_is_refused_at_plan_time(qa_run, capsys):
    rd, data, _ = qa_run
    assert main(["render", str(QA), "task.null_threshold=-1000", "--out", str(rd.root / "x")]) == 2
    err = capsys.readouterr().err
    assert "task.null_threshold" in err and "-1000" in err and "Traceback" not in err
    assert main(["eval", str(rd.root), "task.null_threshold=nan"]) == 2
    assert main(["predict", str(rd.root), "--text", "q", "--pair", "c", "model.dropout=0.5"]) == 2
    assert "cannot be changed after training" in capsys.readouterr().err
