"""Tokenizer and model from the recipe: hub name or local directory, pretrained or fresh.

The task picks the head (sequence, token or span classification). An optional extra head
layer (model.head_hidden) is recorded in the config as `launcher_head`, so `load_trained`
rebuilds the same module before loading the exported or checkpointed weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from launcher.errors import RecipeError
from launcher.recipe.schema import ModelConfig
from launcher.tasks import Task


def build_tokenizer(cfg: ModelConfig) -> Any:
    return AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.name)


def build_model(cfg: ModelConfig, task: Task) -> Any:
    overrides: dict[str, Any] = dict(cfg.config_overrides)
    if cfg.dropout is not None:
        overrides.update(hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
    if cfg.classifier_dropout is not None:
        overrides["classifier_dropout"] = cfg.classifier_dropout
    config = AutoConfig.from_pretrained(cfg.name, **task.config_kwargs(), **overrides)
    auto = getattr(transformers, task.auto_model)
    if cfg.pretrained:
        model = auto.from_pretrained(cfg.name, config=config)
    else:
        model = auto.from_config(config)
    if cfg.head_hidden is not None:
        dropout = next(p for p in (cfg.head_dropout, cfg.classifier_dropout,
                                   getattr(config, "hidden_dropout_prob", 0.1)) if p is not None)
        config.launcher_head = {"hidden": cfg.head_hidden, "dropout": dropout}
        _add_head(model, config)
    _freeze(model, cfg)
    return model


def _add_head(model: Any, config: Any) -> None:
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise RecipeError("model.head_hidden", f"needs a model whose classifier is one linear "
                          f"layer (BERT-style); {type(model).__name__} has "
                          f"{type(head).__name__}", "remove model.head_hidden for this model")
    spec = config.launcher_head
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(head.in_features, spec["hidden"]), torch.nn.GELU(),
        torch.nn.Dropout(spec["dropout"]), torch.nn.Linear(spec["hidden"], head.out_features))


def _freeze(model: Any, cfg: ModelConfig) -> None:
    base = model.base_model
    if cfg.freeze_embeddings or cfg.freeze_encoder:
        base.embeddings.requires_grad_(False)
    layers = base.encoder.layer
    if cfg.freeze_layers > len(layers):
        raise RecipeError("model.freeze_layers", f"is {cfg.freeze_layers} but {cfg.name} has "
                          f"{len(layers)} encoder layers", f"set it to {len(layers)} or fewer, "
                          "or use model.freeze_encoder")
    for layer in layers[:len(layers) if cfg.freeze_encoder else cfg.freeze_layers]:
        layer.requires_grad_(False)
    if cfg.freeze_encoder and getattr(base, "pooler", None) is not None:
        base.pooler.requires_grad_(False)


def load_trained(model_dir: Path, task: Task,
                 weights: Optional[dict[str, torch.Tensor]] = None) -> Any:
    """A trained model from an export (`final/`) or, with `weights` (a checkpoint's model
    state), the export's config with those weights."""
    config = AutoConfig.from_pretrained(model_dir)
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
