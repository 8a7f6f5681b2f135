"""Every model family on every path (launcher/families.py).

In process, for tiny random models of each family built by transformers (tests/tiny_families.py):
every task x family trains one step through the engine's own build_model / build_tokenizer and
the task's own encode and loss, with dropout overrides and the extra head layer; freezing
freezes exactly what it names; packed micro batches give the padded path's loss and gradients.
The planning refusals are run through the real CLI in process.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import REPO
import tiny_families
from launcher import cli, families, tasks
from launcher.engine import packing
from launcher.engine.model import build_model, build_tokenizer, module_at
from launcher.errors import RecipeError
from launcher.recipe.load import load

FAMILIES = list(tiny_families.configs())
TASKS = {  # name -> (recipe, overrides)
    "news": ("tiny_news", []),
    "nli-pairs": ("tiny_nli", []),
    "multilabel": ("tiny_multilabel", []),
    "ner": ("tiny_ner", []),
    "qa": ("tiny_qa", []),
}
DROPOUT, HEAD_DROPOUT = 0.37, 0.23


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    return tiny_families.build(tmp_path_factory.mktemp("families"))


def _recipe(name: str, model_dir, *overrides: str):
    return load(REPO / "recipes" / f"{name}.py",
                [f"model.name={model_dir}", "model.tokenizer=none", *overrides]).recipe


def _batch(recipe, tokenizer, n: int = 8) -> dict:
    task = tasks.for_recipe(recipe)
    lines = (REPO / recipe.data.train).read_text().splitlines()[:n]
    return task, task.encode([json.loads(line) for line in lines], tokenizer, indices=range(n))


def _step(model, task, batch) -> torch.Tensor:
    inputs = dict(batch["inputs"])
    labels = inputs.pop("labels")
    # the micro batch's mean over its labelled units, as the engine's step computes it
    loss = task.loss_sum(model(**inputs), labels, None) / task.units(labels, None).float()
    loss.backward()
    return loss


@pytest.mark.parametrize("task_name", list(TASKS))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_task_trains_every_family_with_dropout_and_head_overrides(
        family_models, family, task_name):
    recipe_name, extra = TASKS[task_name]
    head = [] if task_name == "qa" else ["model.head_hidden=16"]
    recipe = _recipe(recipe_name, family_models[family], f"model.dropout={DROPOUT}",
                     f"model.classifier_dropout={HEAD_DROPOUT}", *head, *extra)
    torch.manual_seed(0)
    task = tasks.for_recipe(recipe)
    model = build_model(recipe.model, task)
    tokenizer = build_tokenizer(recipe.model)
    task, batch = _batch(recipe, tokenizer)
    if not families.for_type(family).token_types or model.config.type_vocab_size <= 1:
        assert "token_type_ids" not in batch["inputs"]
    loss = _step(model, task, batch)
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{family} {task_name}: {name} got no gradient"
    # model.dropout reaches every dropout of the encoder, whatever the family calls it
    for name in families.for_type(family).dropout:
        assert getattr(model.config, name) == DROPOUT, name
    inner = [m.p for m in model.base_model.modules() if isinstance(m, torch.nn.Dropout)]
    assert inner and set(inner) == {DROPOUT}
    outer = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert outer <= {DROPOUT, HEAD_DROPOUT}, outer  # no family default (0.1, 0.2) left
    if head:
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Sequential)
                  and len(m) == 4 and isinstance(m[0], torch.nn.Linear)]
        assert len(layers) == 1 and layers[0][0].out_features == 16


def test_a_model_without_token_types_gets_none_from_its_tokenizer_or_its_export(family_models,
                                                                             tmp_path):
    """DistilBERT with a BERT WordPiece tokenizer (which makes token type ids)."""
    import transformers

    recipe = _recipe("tiny_nli", family_models["distilbert"])
    tokenizer = build_tokenizer(recipe.model)
    assert "token_type_ids" not in tokenizer("a premise", "a hypothesis")
    tokenizer.save_pretrained(tmp_path / "final")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "final")
    assert "token_type_ids" not in again("a premise", "a hypothesis")


FREEZE = {"embeddings": ["model.freeze_embeddings=true"], "first-layer": ["model.freeze_layers=1"],
          "encoder": ["model.freeze_encoder=true"]}


@pytest.mark.parametrize("what", list(FREEZE))
@pytest.mark.parametrize("family", FAMILIES)
def test_freezing_freezes_what_it_names_in_every_family(family_models, family, what):
    path = family_models[family]
    overrides = FREEZE[what]
    if family == "albert" and what == "first-layer":
        # ALBERT's layers share weights: refused with one line, and allowed with a group each
        with pytest.raises(RecipeError, match="share one set of weights"):
            families.check(_recipe("tiny_news", path, *overrides))
        overrides = [*overrides, 'model.config_overrides={"num_hidden_groups": 2}']
    recipe = _recipe("tiny_news", path, *overrides)
    families.check(recipe)
    task = tasks.for_recipe(recipe)
    model = build_model(recipe.model, task)
    fam = families.for_type(family)
    base = model.base_model
    if what == "embeddings":
        expect = {id(p) for m in filter(None, (module_at(base, x) for x in fam.embeddings))
                  for p in m.parameters()}
    elif what == "first-layer":
        expect = {id(p) for p in module_at(base, fam.layers)[0].parameters()}
    else:
        expect = {id(p) for p in base.parameters()}
    assert expect
    _, batch = _batch(recipe, build_tokenizer(recipe.model))
    _step(model, task, batch)
    for name, p in model.named_parameters():
        frozen = id(p) in expect
        assert p.requires_grad is not frozen, name
        assert (p.grad is None) is frozen, name


def test_freezing_more_layers_than_the_model_has_is_refused_before_launch(family_models, capsys):
    rc = cli.main(["run", str(REPO / "recipes" / "tiny_news.py"), "--dry-run",
                   f"model.name={family_models['distilbert']}", "model.tokenizer=none",
                   "model.freeze_layers=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.freeze_layers: is 3" in err and "has 2 encoder layers" in err
    assert "Traceback" not in err


def test_a_model_type_outside_the_table_is_refused_before_launch(tmp_path, capsys):
    import transformers

    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    rc = cli.main(["run", str(REPO / "recipes" / "tiny_news.py"), "--dry-run",
                   f"model.name={tmp_path / 'gpt2'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "'gpt2' model" in err and "bert, roberta, xlm-roberta" in err and "modernbert" in err


# Sentence pairs (token types, two segments) in every family; multi-label's loss once.
PACKED = ([(f, "cls", "nli-pairs") for f in FAMILIES] + [("modernbert", "mean", "nli-pairs"),
                                                          ("modernbert", "mean", "multilabel")])


@pytest.mark.parametrize("family,pooling,task_name", PACKED,
                         ids=["-".join(cell) for cell in PACKED])
def test_packed_equals_padded_loss_and_gradients_in_every_family(family_models, family, pooling,
                                                                 task_name):
    recipe_name, _ = TASKS[task_name]
    over = '{"classifier_pooling": "mean"}' if pooling == "mean" else "{}"
    recipe = _recipe(recipe_name, family_models[family], "model.dropout=0.0",
                     "model.classifier_dropout=0.0", "data.max_length=32", "data.packing=true",
                     f"model.config_overrides={over}")
    families.check(recipe)
    torch.manual_seed(0)
    task = tasks.for_recipe(recipe)
    plain = build_model(recipe.model, task)
    plain.config._attn_implementation = "sdpa"
    fast = copy.deepcopy(plain)
    pooler = packing.install(fast)
    _, batch = _batch(recipe, build_tokenizer(recipe.model), n=24)
    packed = packing.pack(batch["inputs"], capacity=96)
    assert packed["input_ids"].shape[0] < 24 / 2  # really packed
    loss = _step(plain, task, batch)
    with packing.pooled_at(pooler, packed["cls_index"]):
        fast_loss = _step(fast, task, {"inputs": packing.model_inputs(packed)
                                       | {"labels": packed["labels"]}})
    assert abs(loss.item() - fast_loss.item()) <= 1e-5
    assert fast.state_dict().keys() == plain.state_dict().keys()
    grads = dict(fast.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-5, rtol=0), name


def test_fsdp_block_of_every_family_is_a_module_of_its_model(family_models):
    """The block the plan renders and the engine wraps exists, once per layer."""
    import transformers

    for family, path in family_models.items():
        config = transformers.AutoConfig.from_pretrained(path, num_labels=2)
        model = transformers.AutoModelForSequenceClassification.from_config(config)
        block = families.block_class(family)
        found = [m for m in model.modules() if type(m).__name__ == block]
        # ALBERT runs one shared block num_hidden_layers times
        assert len(found) == (1 if family == "albert" else config.num_hidden_layers), family
    for model_type, cls in [("xlm-roberta", "XLMRobertaLayer"), ("camembert", "CamembertLayer")]:
        config = transformers.AutoConfig.for_model(model_type, **tiny_families.SMALL)
        model = transformers.AutoModel.from_config(config)
        assert families.block_class(model_type) == cls
        assert sum(type(m).__name__ == cls for m in model.modules()) == 2
