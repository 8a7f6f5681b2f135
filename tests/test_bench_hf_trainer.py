"""The bench's HF Trainer baseline through real torchrun on CPU: gloo ranks, tiny BERT."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification

from conftest import REPO, cli_env
from launcher.engine.flops import FlopShape, flop_shape
from launcher.engine.step_timer import RESULT_FIELDS

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
MAX_LENGTH = 64
MICRO_BATCH = 8
STEPS = 5


def bench(tmp: Path, settings: str, procs: int) -> dict:
    """Run the worker under torchrun and return its result."""
    model_dir = tmp / "model"
    if not model_dir.exists():
        model_dir.mkdir(parents=True)
        for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
            shutil.copy(REPO / "models" / "tiny-bert" / name, model_dir / name)
    spec = dict(
        model_dir=str(model_dir), pretrained=False,
        train_file=str(REPO / "data" / "tiny_news" / "train.jsonl"), text_column="text",
        text_pair_column=None, label_column="label", labels=LABELS, max_length=MAX_LENGTH,
        micro_batch=MICRO_BATCH, grad_accum=1, precision="fp32", settings=settings,
        warmup_steps=2, steps=STEPS, lr=2e-5, seed=0, name=f"hf {settings}",
        result=str(tmp / f"{settings}.json"), work_dir=str(tmp / f"work-{settings}"))
    spec_path = tmp / f"{settings}-spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc-per-node", str(procs), "-m", "launcher.bench.hf_trainer", str(spec_path)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(Path(spec["result"]).read_text())


@pytest.fixture(scope="module")
def shape() -> FlopShape:
    config = AutoConfig.from_pretrained(REPO / "models" / "tiny-bert", num_labels=len(LABELS))
    return flop_shape(AutoModelForSequenceClassification.from_config(config))


@pytest.fixture(scope="module")
def best(tmp_path_factory) -> dict:
    return bench(tmp_path_factory.mktemp("hf-best"), "best", procs=2)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory) -> dict:
    return bench(tmp_path_factory.mktemp("hf-tutorial"), "tutorial", procs=1)


def test_best_result_has_every_field_and_counts_both_ranks(best):
    assert set(best) == set(RESULT_FIELDS)
    assert best["error"] is None
    assert (best["runner"], best["strategy"], best["world_size"]) == ("hf-trainer", "ddp", 2)
    assert best["global_batch"] == MICRO_BATCH * 2
    assert best["padding"] == "dynamic, multiple of 8, length-grouped"
    assert best["peak_memory_bytes"] is None and best["peak_reserved_bytes"] is None
    assert len(best["step_times_s"]) == len(best["data_wait_s"]) == STEPS
    assert all(0 <= w < t for w, t in zip(best["data_wait_s"], best["step_times_s"]))
    assert best["wall_s"] == pytest.approx(sum(best["step_times_s"]))
    assert best["samples"] == STEPS * MICRO_BATCH * 2


def test_best_pads_each_batch_to_a_multiple_of_8(best):
    # Every micro batch has MICRO_BATCH rows padded to a width that is a multiple of 8.
    assert best["padded_tokens"] % (MICRO_BATCH * 8) == 0
    assert 0 < best["real_tokens"] <= best["padded_tokens"] < best["samples"] * MAX_LENGTH


def test_best_flops_lie_within_what_the_lengths_allow(best, shape):
    rows, real, padded = best["samples"], best["real_tokens"], best["padded_tokens"]
    # sum(S^2) over rows lies between (sum S)^2 / rows (all equal) and sum S x the longest.
    assert (shape.train_flops(real, real * real / rows, rows) <= best["model_flops"]
            <= shape.train_flops(real, real * MAX_LENGTH, rows))
    assert (shape.train_flops(padded, padded * padded / rows, rows) <= best["hardware_flops"]
            <= shape.train_flops(padded, padded * MAX_LENGTH, rows))
    assert best["model_flops"] < best["hardware_flops"]


def test_tutorial_pads_every_row_to_max_length(tutorial, shape):
    assert tutorial["error"] is None and tutorial["world_size"] == 1
    assert tutorial["padding"] == f"max_length ({MAX_LENGTH})"
    rows = tutorial["samples"]
    assert rows == STEPS * MICRO_BATCH
    assert tutorial["padded_tokens"] == rows * MAX_LENGTH
    assert tutorial["hardware_flops"] == shape.train_flops(
        rows * MAX_LENGTH, rows * MAX_LENGTH * MAX_LENGTH, rows)
    assert 0 < tutorial["model_flops"] < tutorial["hardware_flops"]
