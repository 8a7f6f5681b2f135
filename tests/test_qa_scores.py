"""QA metrics are the metrics of what `predict` answers: at any task.null_threshold, the
project's SQuAD v2 scorer run on predict's output gives metrics.json's numbers. And predict's
output is the input row with `id` and `predicted` added, the gold answers left in place."""

from __future__ import annotations

import json

import pytest

import task_runs
from conftest import REPO
from launcher.cli import main
from launcher.engine.eval_main import run_eval
from launcher.metrics.squad_v2 import squad_v2_report

QA = REPO / "recipes" / "tiny_qa.py"
THRESHOLDS = (-5, 0, 5)


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    """tiny_qa as tests/test_tasks.py trains it (one run a session, tests/task_runs.py), and
    the first 200 eval rows. The thresholds must decide differently on some of them (the
    test checks that they do)."""
    rd, _ = task_runs.trained(tmp_path_factory.mktemp("task_runs"))["qa"]
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
