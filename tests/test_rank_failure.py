"""A rank that dies takes the job down, and the user is told which rank and why."""

from __future__ import annotations

import io
import json

from rich.console import Console

from conftest import REPO, TINY, cli_env
from launcher import plan as plan_mod
from launcher.executors.local import LocalExecutor
from launcher.recipe.load import load


def test_failing_rank_is_named_with_its_log(tmp_path, capsys, monkeypatch):
    for key, value in cli_env().items():  # the executor's launch inherits this environment
        monkeypatch.setenv(key, value)
    rows = [json.loads(line) for line in (REPO / "data/tiny_news/train.jsonl").read_text().splitlines()[:400]]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = plan_mod.build(load(TINY, ["scale.procs_per_node=2", f"data.train={data}",
                                      f"run.output_dir={tmp_path / 'run'}", "run.max_steps=3",
                                      "run.epochs=none",
                                      # file order, so the bad row's reader is known: rank 1
                                      "data.shuffle=false"]))
    # The file changes after planning (as it may while a job waits in a queue): the plan's
    # checks passed, so only the rank that reads the bad row (odd rows: rank 1) finds it.
    rows[3]["label"] = "Politics"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    executor = LocalExecutor()
    executor.check(plan)
    rc = executor.submit(plan, executor.prepare(plan), Console(file=io.StringIO()))
    stderr = capsys.readouterr().err
    assert rc != 0
    assert "rank 1 of 2 failed" in stderr
    assert "label 'Politics'" in stderr  # from the last lines of logs/rank1.log
    assert (tmp_path / "run/logs/rank1.error").is_file()
