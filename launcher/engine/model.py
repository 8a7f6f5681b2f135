"""Tokenizer and model from the recipe: hub name or local directory, pretrained or fresh.

The task picks the head (sequence, token or span classification); the model's family
(launcher/families.py) says where its embeddings and blocks are, what its dropouts are called
and whether it reads token type ids. An optional extra head layer (model.head_hidden) is
recorded in the config as `launcher_head`, so `load_trained` rebuilds the same module before
loading the exported or checkpointed weights.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from launcher import families
from launcher.errors import RecipeError
from launcher.recipe.schema import ModelConfig
from launcher.tasks import Task


def family_of(config: Any) -> families.Family:
    return families.for_type(getattr(config, "model_type", None))


def uses_token_types(config: Any) -> bool:
    return family_of(config).token_types and getattr(config, "type_vocab_size", 0) > 1


def fsdp_block(cfg: ModelConfig) -> str:
    """The class of the model family's transformer block: FSDP makes one unit of each."""
    return families.block_class(AutoConfig.from_pretrained(cfg.name).model_type)


def build_tokenizer(cfg: ModelConfig) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.name)
    return fit_tokenizer(tokenizer, AutoConfig.from_pretrained(cfg.name))


def fit_tokenizer(tokenizer: Any, config: Any) -> Any:
    """A model without token types (DistilBERT, ModernBERT, RoBERTa's one type) is not given
    them, whichever tokenizer the recipe names; saved with the export, so `final/` agrees."""
    names = list(tokenizer.model_input_names)
    if "token_type_ids" in names and not uses_token_types(config):
        names.remove("token_type_ids")
        tokenizer.model_input_names = names
        tokenizer.init_kwargs["model_input_names"] = names
    return tokenizer


def build_model(cfg: ModelConfig, task: Task) -> Any:
    overrides: dict[str, Any] = dict(cfg.config_overrides)
    family = family_of(AutoConfig.from_pretrained(cfg.name))
    if cfg.dropout is not None:
        overrides.update(dict.fromkeys(family.dropout, cfg.dropout))
    if cfg.classifier_dropout is not None:
        overrides.update(dict.fromkeys(family.classifier_dropout, cfg.classifier_dropout))
    config = AutoConfig.from_pretrained(cfg.name, **task.config_kwargs(), **overrides)
    auto = getattr(transformers, task.auto_model)
    if cfg.pretrained:
        model = auto.from_pretrained(cfg.name, config=config)
    else:
        model = auto.from_config(config)
    if cfg.head_hidden is not None:
        dropout = next(p for p in (cfg.head_dropout, cfg.classifier_dropout,
                                   getattr(config, family.dropout[0], 0.1)) if p is not None)
        config.launcher_head = {"hidden": cfg.head_hidden, "dropout": dropout}
        _add_head(model, config)
    _freeze(model, cfg, family)
    return model


def module_at(root: Any, path: str) -> Any:
    """The submodule at a dotted path ("" is root itself), or None."""
    for name in filter(None, path.split(".")):
        root = getattr(root, name, None)
    return root


def _add_head(model: Any, config: Any) -> None:
    # The output layer of a classification head: `classifier`, or the `out_proj` at the end
    # of RoBERTa's and ELECTRA's two-layer sequence heads.
    owner, name = model, "classifier"
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear) and isinstance(getattr(head, "out_proj", None),
                                                            torch.nn.Linear):
        owner, name, head = head, "out_proj", head.out_proj
    if not isinstance(head, torch.nn.Linear):
        raise RecipeError("model.head_hidden", f"needs a classification head ending in one "
                          f"linear layer; {type(model).__name__} has {type(head).__name__}",
                          "remove model.head_hidden for this model")
    spec = config.launcher_head
    setattr(owner, name, torch.nn.Sequential(
        torch.nn.Linear(head.in_features, spec["hidden"]), torch.nn.GELU(),
        torch.nn.Dropout(spec["dropout"]), torch.nn.Linear(spec["hidden"], head.out_features)))


def _freeze(model: Any, cfg: ModelConfig, family: families.Family) -> None:
    base = model.base_model
    if cfg.freeze_encoder:
        # Everything but the task head (which lives outside the base model in every family).
        base.requires_grad_(False)
        return
    if cfg.freeze_embeddings:
        for path in family.embeddings:
            module = module_at(base, path)
            if module is not None:
                module.requires_grad_(False)
    if not cfg.freeze_layers:
        return
    n = families.freezable_layers(family, model.config.to_dict())
    layers = module_at(base, family.layers)
    if n is None or cfg.freeze_layers > len(layers):
        # The plan refuses these for a config it can read; a hub model read only here too.
        families.check_freeze(cfg, family, model.config.to_dict())
    for layer in layers[:cfg.freeze_layers]:
        layer.requires_grad_(False)


def load_trained(model_dir: Path, task: Task,
                 weights: Optional[dict[str, torch.Tensor]] = None) -> Any:
    """A trained model from an export (`final/`) or, with `weights` (a checkpoint's model
    state), the export's config with those weights."""
    config = AutoConfig.from_pretrained(model_dir)
    family_of(config)
    auto = getattr(transformers, task.auto_model)
    if getattr(config, "launcher_head", None) is None and weights is None:
        return auto.from_pretrained(model_dir)
    model = auto.from_config(config)
    if getattr(config, "launcher_head", None) is not None:
        _add_head(model, config)
    from safetensors.torch import load_file
    state = weights if weights is not None else load_file(str(model_dir / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied or buffer-only entries may be absent from a file; real weights may not.
    real_missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if real_missing or unexpected:
        raise ValueError(f"the weights do not fit the model in {model_dir}: missing "
                         f"{real_missing[:5]}, unexpected {list(unexpected)[:5]}")
    return model


def unwrapped(model: Any, accelerator: Any, strategy: str) -> Any:
    """accelerate's unwrap_model, without its probe for DeepSpeed in a run that is not ZeRO
    (_deepspeed_unprobed)."""
    with _deepspeed_unprobed(strategy):
        return accelerator.unwrap_model(model)


def save_export(model: Any, state: dict, tokenizer: Any, out: Path, strategy: str) -> None:
    """The run's Hugging Face export (weights, config, tokenizer) in `out`: the whole model's
    `state`, written by one rank."""
    with _deepspeed_unprobed(strategy):
        model.save_pretrained(out, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out)


def gathered_state(model: Any, inner: Any, accelerator: Any, strategy: str) -> dict:
    """The whole model's weights on every rank, as the export writes them: gathered from the
    shards of the prepared `model` for ZeRO and FSDP (a collective), else `inner`'s own (DDP:
    each rank holds all of it)."""
    if strategy.startswith("zero") or strategy == "fsdp":
        with _deepspeed_unprobed(strategy):
            return accelerator.get_state_dict(model)
    return inner.state_dict()


@contextlib.contextmanager
def _deepspeed_unprobed(strategy: str):
    """accelerate's unwrap_model and get_state_dict, and save_pretrained through them, unwrap the
    model with accelerate's extract_model_from_parallel, which imports DeepSpeed whenever it is
    installed, only to ask whether the model is a DeepSpeedEngine: 1.1-1.4 s on a rank at its
    first eval and again at the export of every DDP or FSDP run (DeepSpeed imports mlflow), for
    an answer known here, since only a ZeRO run's model is one. For other strategies
    accelerate's probe answers "not installed" for the call; where accelerate has moved it,
    nothing changes but the cost."""
    other = sys.modules.get("accelerate.utils.other")
    probe = getattr(other, "is_deepspeed_available", None)
    if strategy.startswith("zero") or probe is None or "deepspeed" in sys.modules:
        yield
        return
    other.is_deepspeed_available = lambda: False
    try:
        yield
    finally:
        other.is_deepspeed_available = probe
