"""`launcher bench`: the FLOP formula against torch's own counter, the synthetic lengths, and
the whole benchmark on CPU (ours padded and packed, HF Trainer best and tutorial, 2 ranks; no
speed is asserted here). One bench run serves every test that reads a result."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from conftest import REPO, TINY, launcher
from launcher.bench import synthetic
from launcher.engine import flops
from launcher.engine.step_timer import RESULT_FIELDS
from launcher.engine import data
from launcher.recipe.load import load


@pytest.mark.parametrize("head", ["BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForQuestionAnswering"])
def test_flop_formula_matches_torch_flop_counter(head):
    config = transformers.BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=3,
                                     num_attention_heads=4, intermediate_size=512,
                                     num_labels=2 if "Question" in head else 4)
    model = getattr(transformers, head)(config)
    rows, length = 4, 128  # long enough that the attention term is a sixth of the total
    ids = torch.randint(0, 500, (rows, length))
    with FlopCounterMode(display=False) as counter:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        loss = out.logits.sum() if "Question" not in head else \
            out.start_logits.sum() + out.end_logits.sum()
        loss.backward()
    shape = flops.flop_shape(model)
    want = shape.train_flops(rows * length, rows * length * length, rows)
    # The formula counts each linear layer's bias as a weight (a multiply-add per token);
    # torch counts matmuls only: 1 / hidden apart at most.
    assert want == pytest.approx(counter.get_total_flops(), rel=1.5 / config.hidden_size)
    # and the attention term is there: without it the count falls short by more than that
    assert 6 * shape.per_token_params * rows * length < counter.get_total_flops() * 0.9


def test_flop_shape_counts_the_pooled_head_once_per_row():
    config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128, num_labels=4)
    shape = flops.flop_shape(transformers.BertForSequenceClassification(config))
    assert shape.per_row_params == (64 * 64 + 64) + (64 * 4 + 4)  # pooler + classifier
    per_layer = 4 * (64 * 64 + 64) + 2 * 64 + (64 * 128 + 128) + (128 * 64 + 64) + 2 * 64
    assert shape.per_token_params == 2 * per_layer


def test_peak_table_knows_the_gpus_torch_names():
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert flops.peak_tflops("CPU: Intel(R) Xeon(R)", "fp32") is None


def test_synthetic_rows_have_exactly_the_drawn_lengths(tmp_path):
    recipe = load(REPO / "recipes" / "bert_large_ag_news.py").recipe
    model = synthetic.write_model(recipe, tmp_path / "model")
    config = transformers.AutoConfig.from_pretrained(model)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (24, 1024, 30522)
    rows = synthetic.write_rows(tmp_path / "train.jsonl", model, 500, 128, 4, seed=3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    texts = [json.loads(line)["text"] for line in rows.read_text().splitlines()]
    got = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    assert got == synthetic.lengths(500, 128, seed=3).tolist()
    drawn = synthetic.lengths(200_000, 128, seed=0)
    assert drawn.min() == 12 and drawn.max() == 128 and 51 < drawn.mean() < 52.5


STEPS, WARMUP, BATCH, MAX_LENGTH = 4, 1, 16, 64  # tiny_news pads rows to 64 at most


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One `launcher bench` of 4 configurations on 2 ranks, one torchrun job each: ours padded
    and packed, HF Trainer with its best settings and as the tutorials write it."""
    out = tmp_path_factory.mktemp("bench") / "bench"
    proc = launcher("bench", TINY, "--synthetic", "--baseline", "hf-trainer", "--baseline",
                    "hf-trainer-tutorial", "--nproc-per-node", "2", "--steps", STEPS,
                    "--warmup", WARMUP, "--batch", BATCH, "--out", out, "--packing", "both",
                    timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, json.loads((out / "report.json").read_text())


def test_bench_on_cpu_writes_the_report_beside_hf_trainer(bench):
    out, proc, report = bench
    steps, warmup, batch = STEPS, WARMUP, BATCH
    for name in ("REPORT.md", "report.json", "throughput.png", "step_times.png", "memory.png"):
        assert (out / name).is_file(), name
    ours, packed, hf, tutorial = report["results"]
    assert (ours["runner"], packed["runner"], hf["runner"], tutorial["runner"]) == (
        "launcher", "launcher", "hf-trainer", "hf-trainer")
    for result in (ours, packed, hf, tutorial):
        assert set(RESULT_FIELDS) <= set(result), set(RESULT_FIELDS) - set(result)
        assert result["error"] is None and result["world_size"] == 2
        assert len(result["step_times_s"]) == len(result["data_wait_s"]) == steps
        assert result["samples"] == steps * batch * 2
        assert result["real_tokens"] <= result["padded_tokens"]
        assert 0 < result["model_flops"] <= result["hardware_flops"]
    # Our stream is epoch 0's shuffled order of the file: the timed steps trained these rows.
    drawn = synthetic.lengths(sum(1 for _ in (out / "inputs" / "train.jsonl").open()), 64,
                              seed=42)
    order = data.epoch_order(len(drawn), load(TINY).recipe.run.seed, 0, shuffle=True)
    timed = drawn[order[warmup * batch * 2:(warmup + steps) * batch * 2]]
    assert ours["real_tokens"] == packed["real_tokens"] == int(timed.sum())
    assert packed["padded_tokens"] < ours["padded_tokens"]  # what packing is for
    assert report["rows"][0]["mfu"] is None  # no datasheet peak for a CPU
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["launcher ddp b16"]["vs_baseline"] == pytest.approx(
        rows["launcher ddp b16"]["samples_per_s"] / rows["HF Trainer best b16"]["samples_per_s"])
    text = (out / "REPORT.md").read_text()
    assert "6 x N x tokens + 12 x L x H x sum(S^2)" in text
    assert "launcher ddp b16" in text and "HF Trainer best b16" in text
    assert "HF Trainer tutorial b16" in text
    assert "samples/s" in proc.stdout and "REPORT.md" in proc.stdout


# HF Trainer's runs in that bench (launcher/bench/hf_trainer.py under torchrun, gloo ranks)


@pytest.fixture(scope="module")
def shape(bench) -> flops.FlopShape:
    """The FLOP shape of the model both HF Trainer runs trained (the bench's synthetic one)."""
    config = transformers.AutoConfig.from_pretrained(bench[0] / "inputs" / "model",
                                                     num_labels=4)
    return flops.flop_shape(transformers.AutoModelForSequenceClassification.from_config(config))


def test_hf_trainer_best_result_has_every_field_and_counts_both_ranks(bench):
    best = bench[2]["results"][2]
    assert set(best) == set(RESULT_FIELDS)
    assert (best["runner"], best["strategy"], best["world_size"]) == ("hf-trainer", "ddp", 2)
    assert best["global_batch"] == BATCH * 2
    assert best["padding"] == "dynamic, multiple of 8, length-grouped"
    assert best["peak_memory_bytes"] is None and best["peak_reserved_bytes"] is None
    assert all(0 <= w < t for w, t in zip(best["data_wait_s"], best["step_times_s"]))
    assert best["wall_s"] == pytest.approx(sum(best["step_times_s"]))


def test_hf_trainer_best_pads_each_batch_to_a_multiple_of_8(bench):
    best = bench[2]["results"][2]
    # Every micro batch has BATCH rows padded to a width that is a multiple of 8.
    assert best["padded_tokens"] % (BATCH * 8) == 0
    assert 0 < best["real_tokens"] <= best["padded_tokens"] < best["samples"] * MAX_LENGTH


def test_hf_trainer_best_flops_lie_within_what_the_lengths_allow(bench, shape):
    best = bench[2]["results"][2]
    rows, real, padded = best["samples"], best["real_tokens"], best["padded_tokens"]
    # sum(S^2) over rows lies between (sum S)^2 / rows (all equal) and sum S x the longest.
    assert (shape.train_flops(real, real * real / rows, rows) <= best["model_flops"]
            <= shape.train_flops(real, real * MAX_LENGTH, rows))
    assert (shape.train_flops(padded, padded * padded / rows, rows) <= best["hardware_flops"]
            <= shape.train_flops(padded, padded * MAX_LENGTH, rows))
    assert best["model_flops"] < best["hardware_flops"]


def test_hf_trainer_tutorial_pads_every_row_to_max_length(bench, shape):
    tutorial = bench[2]["results"][3]
    assert set(tutorial) == set(RESULT_FIELDS)
    assert tutorial["padding"] == f"max_length ({MAX_LENGTH})"
    rows = tutorial["samples"]
    assert rows == STEPS * BATCH * 2
    assert tutorial["padded_tokens"] == rows * MAX_LENGTH
    assert tutorial["hardware_flops"] == shape.train_flops(
        rows * MAX_LENGTH, rows * MAX_LENGTH * MAX_LENGTH, rows)
    assert 0 < tutorial["model_flops"] < tutorial["hardware_flops"]


def test_bench_refuses_what_it_cannot_measure(tmp_path, cli):
    proc = cli("bench", REPO / "recipes" / "tiny_ner.py", "--out", tmp_path / "b")
    assert proc.returncode == 2 and "task.type" in proc.stderr
    proc = cli("bench", TINY, "--strategies", "zero4", "--out", tmp_path / "b")
    assert proc.returncode == 2 and "--strategies" in proc.stderr and "zero3" in proc.stderr
    proc = cli("bench", TINY, "--batch", "32,x", "--out", tmp_path / "b")
    assert proc.returncode == 2 and "--batch" in proc.stderr
    proc = cli("bench", TINY, "--strategies", "ddp,zero2", "--compile", "default",
               "--out", tmp_path / "b")
    assert proc.returncode == 2 and "scale.compile" in proc.stderr and "zero2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()  # refused before anything was written
