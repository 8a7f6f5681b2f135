"""plan-memory: the ZeRO paper's arithmetic, parameter counts that match the real models, and
a warning before launch when the recipe's GPU is too small."""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import REPO, TINY, launcher
from launcher.plan.memory import Shape, model_state_bytes, parameters

BERT_LARGE = REPO / "recipes" / "bert_large_ag_news.py"


def test_model_states_match_the_zero_paper():
    """ZeRO paper, figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam."""
    psi, n = 7.5e9, 64
    want = {"ddp": 120, "zero1": 31.4, "zero2": 16.6, "zero3": 1.9}
    for strategy, gb in want.items():
        got = sum(model_state_bytes(psi, strategy, "bf16", n).values()) / 1e9
        assert got == pytest.approx(gb, abs=0.05), strategy


@pytest.mark.parametrize("auto,head,labels", [
    ("BertForSequenceClassification", "sequence", 4),
    ("BertForTokenClassification", "token", 9),
    ("BertForQuestionAnswering", "span", 2),
])
@pytest.mark.parametrize("dims", [(2, 64, 128, 2), (12, 768, 3072, 12)],
                         ids=["tiny", "bert-base"])
def test_parameter_count_equals_the_real_model(auto, head, labels, dims):
    layers, hidden, inter, heads = dims
    shape = Shape(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                  intermediate_size=inter, num_attention_heads=heads)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=hidden,
                                     num_hidden_layers=layers, intermediate_size=inter,
                                     num_attention_heads=heads, num_labels=labels)
    with torch.device("meta"):
        model = getattr(transformers, auto)(config)
    real = sum(p.numel() for p in model.parameters())
    assert parameters(shape, labels, head, None) == real


def test_plan_memory_prints_every_strategy():
    proc = launcher("plan-memory", BERT_LARGE, "scale.gpu=A100-40GB")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "335.1M parameters" in out and "16 GPU(s)" in out
    for strategy in ("ddp", "zero1", "zero2", "zero3", "zero3_offload", "fsdp"):
        assert strategy in out


def test_a_recipe_too_big_for_its_gpu_is_warned_about_before_launch(tmp_path):
    flags = ["--nodes", "1", "--gpus-per-node", "1", "scale.strategy=ddp",
             "scale.precision=fp32", "scale.micro_batch=64", "scale.gpu=T4-16GB"]
    proc = launcher("render", BERT_LARGE, *flags, "--out", tmp_path / "plan")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "warning: scale.strategy=ddp needs about" in out and "T4-16GB has 16 GiB" in out
    assert "lower scale.micro_batch" in out
    quiet = launcher("render", TINY, "scale.gpu=T4-16GB", "--out", tmp_path / "tiny")
    assert quiet.returncode == 0 and "warning" not in quiet.stdout
    bad = launcher("render", TINY, "scale.gpu=H100", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "scale.gpu" in bad.stderr and "H100-80GB" in bad.stderr
