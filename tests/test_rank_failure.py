"""A rank that dies takes the job down, and the user is told which rank and why."""

from __future__ import annotations

import json

from conftest import REPO, TINY, launcher


def test_failing_rank_is_named_with_its_log(tmp_path):
    rows = [json.loads(line) for line in (REPO / "data/tiny_news/train.jsonl").read_text().splitlines()[:400]]
    rows[3]["label"] = "Politics"  # odd rows go to rank 1 of 2
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = launcher("run", TINY, "--nproc-per-node", "2", f"data.train={data}",
                    f"run.output_dir={tmp_path / 'run'}", "run.max_steps=3", "run.epochs=none")
    assert proc.returncode != 0
    assert "rank 1 of 2 failed" in proc.stderr
    assert "label 'Politics'" in proc.stderr  # from the last lines of logs/rank1.log
    assert (tmp_path / "run/logs/rank1.error").is_file()
