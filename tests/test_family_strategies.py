"""The family x strategy matrix: every family trains under ddp, zero2, zero3 and fsdp.

Each cell is a real plan (launcher's planning and rendering) for 2 ranks, trained for 2 steps
by the engine's own Trainer on 2 gloo ranks: model, accelerator (DDP, DeepSpeed ZeRO-2/3 or
FSDP2), checkpoint of the last step in the strategy's own format, and the export. 28 torchrun
launches would take minutes, so one launch (tests/train_in_turn.py) trains the 28 cells in
turn in one process group. What each cell shows: the distributed type accelerate set up (and
the ZeRO stage), 2 steps logged with a finite loss, a complete checkpoint, and an export that
loads back as the family's model; under FSDP (really sharded on these CPU ranks), the modules
made FSDP units are the family's blocks, the input embeddings and the root (before this table,
only BertLayer was wrapped, and nothing below the root was sharded for any other family).
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import REPO, TINY
import tiny_families
from together import finish_in_turn, in_turn
from launcher import families
from launcher.checkpoint import store
from launcher.plan.render import write as write_plan
from launcher.plan.build import build
from launcher.recipe.load import load
from launcher.run_dir import RunDir

STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
FAMILIES = list(tiny_families.configs())
BLOCKS = {"albert": 1}  # ALBERT runs one shared block for every layer


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    models = tiny_families.build(root / "models")
    rows = (REPO / "data" / "tiny_news" / "train.jsonl").read_text().splitlines()[:64]
    (root / "train.jsonl").write_text("\n".join(rows) + "\n")
    plan_dirs, cells = [], {}
    for strategy in STRATEGIES:
        for family in FAMILIES:
            loaded = load(TINY, [f"model.name={models[family]}", "model.tokenizer=none",
                                 f"data.train={root / 'train.jsonl'}", "data.eval=none",
                                 "scale.procs_per_node=2", f"scale.strategy={strategy}",
                                 "scale.micro_batch=4", "run.max_steps=2", "run.epochs=none",
                                 "run.log_every=1", "eval.every=0", "checkpoint.every=0"])
            out = root / f"{strategy}-{family}"
            plan = build(loaded, run_dir=str(out))
            write_plan(plan, out / "plan")
            plan_dirs.append(str(out / "plan"))
            cells[strategy, family] = out
    finish_in_turn(in_turn(*plan_dirs, nproc=2), timeout=900)
    return models, cells


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_family_trains_under_every_strategy(matrix, strategy, family):
    import transformers

    models, cells = matrix
    out = cells[strategy, family]
    cell = json.loads((out / "cell.json").read_text())
    assert cell["world"] == 2 and cell["steps"] == 2 and math.isfinite(cell["final_loss"])
    # fsdp: the engine gives a CPU run accelerate's FSDP set-up (engine/trainer.py)
    assert cell["distributed_type"] == ("DEEPSPEED" if strategy.startswith("zero") else
                                        "FSDP" if strategy == "fsdp" else "MULTI_CPU")
    if strategy.startswith("zero"):
        assert cell["zero_stage"] == int(strategy[-1])
    if strategy == "fsdp":
        block = families.block_class(family)
        assert cell["fsdp_units"].count(block) == BLOCKS.get(family, 2)
        assert cell["sharded"]
        # Besides the blocks: the root, the input embeddings and (ModernBERT) the final norm,
        # each a unit of its own as accelerate's FSDP2 wrapping makes them.
        root = type(transformers.AutoModelForSequenceClassification.from_config(
            transformers.AutoConfig.from_pretrained(models[family], num_labels=4))).__name__
        extra = set(cell["fsdp_units"]) - {block}
        assert {root, "Embedding"} <= extra <= {root, "Embedding", "LayerNorm"}, extra
        yaml_text = (out / "plan" / "accelerate.yaml").read_text()
        assert f"fsdp_transformer_layer_cls_to_wrap: {block}" in yaml_text
    rd = RunDir(out)
    losses = [json.loads(line)["loss"] for line in rd.metrics.read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    latest = rd.latest()
    assert latest is not None and store.problem(latest) is None
    model = transformers.AutoModelForSequenceClassification.from_pretrained(rd.final)
    assert model.config.model_type == family
