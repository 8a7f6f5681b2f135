"""Packed micro batches (data.packing): the fast path changes the layout, never the result.

Goal 3 of the speed work: on CPU in fp32, one step on the same examples gives the same loss
and gradients packed and padded (to 1e-5), and a 2-rank run logs the same losses.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

from conftest import REPO, TINY
from launcher.engine import packing
from together import finish_in_turn, in_turn, plan_run

TOL = 1e-5


def _rows(n: int) -> list[dict]:
    lines = (REPO / "data" / "tiny_news" / "train.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def _padded_batch(tokenizer, rows, pairs: bool) -> dict:
    texts = [r["text"] for r in rows]
    second = [r["text"][::-1][:40] for r in rows] if pairs else None
    enc = tokenizer(texts, second, truncation=True, max_length=64, padding=True,
                    pad_to_multiple_of=8, return_tensors="pt")
    return {**dict(enc), "labels": torch.tensor([r["label"] for r in rows])}


def test_packing_keeps_every_token_of_every_example_in_its_own_block():
    tokenizer = transformers.AutoTokenizer.from_pretrained(REPO / "models" / "tiny-bert")
    batch = _padded_batch(tokenizer, _rows(32), pairs=True)
    packed = packing.pack(batch, capacity=128)
    real = batch["attention_mask"].bool()
    rows, width = packed["input_ids"].shape
    assert width == 128 and rows <= len(batch["labels"]) / 2
    assert int(packed["token_mask"].sum()) == int(real.sum())  # no token lost or added
    flat = {k: packed[k].flatten() for k in ("input_ids", "token_type_ids", "position_ids")}
    for i, start in enumerate(packed["cls_index"].tolist()):
        n = int(real[i].sum())
        got = flat["input_ids"][start:start + n]
        assert got.tolist() == batch["input_ids"][i][real[i]].tolist()
        assert got[0] == tokenizer.cls_token_id
        assert flat["token_type_ids"][start:start + n].tolist() == \
            batch["token_type_ids"][i][real[i]].tolist()
        assert flat["position_ids"][start:start + n].tolist() == list(range(n))
        r, c = divmod(start, 128)
        row_mask = packed["attention_mask"][r, 0]
        # an example's tokens see exactly its own tokens
        assert row_mask[c:c + n].sum(dim=1).tolist() == [n] * n
        assert row_mask[c:c + n, c:c + n].all()
    assert packing.lengths_squared(packed) == int((real.sum(dim=1) ** 2).sum())


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_one_step_packed_equals_padded_loss_and_gradients(pairs):
    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(
        REPO / "models" / "tiny-bert", num_labels=4, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    plain = transformers.AutoModelForSequenceClassification.from_config(config)
    fast = copy.deepcopy(plain)
    pooler = packing.install(fast)
    tokenizer = transformers.AutoTokenizer.from_pretrained(REPO / "models" / "tiny-bert")
    batch = _padded_batch(tokenizer, _rows(24), pairs)
    packed = packing.pack(batch, capacity=64)

    loss = torch.nn.functional.cross_entropy(
        plain(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
    loss.backward()
    with packing.pooled_at(pooler, packed["cls_index"]):
        logits = fast(**packing.model_inputs(packed)).logits
    fast_loss = torch.nn.functional.cross_entropy(logits, packed["labels"])
    fast_loss.backward()

    assert abs(loss.item() - fast_loss.item()) <= TOL
    assert fast.state_dict().keys() == plain.state_dict().keys()  # checkpoints and exports fit
    grads = dict(fast.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=TOL, rtol=0), name


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"lr"' in line]


RUN = [TINY, "--nproc-per-node", "2", "run.max_steps=12", "run.epochs=None", "run.log_every=1",
       "data.eval=None",  # not under test: a compiled model would compile each eval shape
       "model.dropout=0.0", "model.classifier_dropout=0.0"]
VARIANTS = {"padded": ["data.packing=false"],
            "eager": ["data.packing=true", "scale.compile=off"],
            "compiled": ["data.packing=true", "scale.compile=default"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The padded run and the two packed ones, planned by `launcher run --dry-run` here and
    trained in turn by one 2-rank process group (together.in_turn): name -> run directory."""
    root = tmp_path_factory.mktemp("packing")
    for name, extra in VARIANTS.items():
        plan_run(*RUN, *extra, f"run.output_dir={root / name}")
    finish_in_turn(in_turn(*(root / name / "plan" for name in VARIANTS), nproc=2))
    return {name: root / name for name in VARIANTS}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_packed_run_on_two_ranks_logs_the_padded_runs_losses(runs, compiled):
    """The engine's fast path end to end: packed (and torch.compile'd, rows in multiples of 4)
    on 2 gloo ranks, against the plain padded eager run."""
    out = runs["compiled" if compiled else "eager"]
    plain, fast = _losses(runs["padded"]), _losses(out)
    assert len(plain) == len(fast) == 12
    assert max(abs(a - b) for a, b in zip(plain, fast)) <= TOL
    # what it is for: far fewer pad tokens computed (empty rows count when compiled)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if "padded_tokens_per_s" in r][-1]
    assert last["padded_tokens_per_s"] < (1.45 if compiled else 1.25) * last["tokens_per_s"]
    assert (out / "final" / "model.safetensors").is_file()


def test_packing_is_refused_for_tasks_that_read_every_token(cli):
    proc = cli("run", REPO / "recipes" / "tiny_ner.py", "data.packing=true", "--dry-run")
    assert proc.returncode == 2
    assert "data.packing" in proc.stderr and "data.packing=false" in proc.stderr
