"""Tokenizer and model from the recipe: hub name or local directory, pretrained or fresh."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from launcher.recipe.schema import ModelConfig, TaskConfig


def build_tokenizer(cfg: ModelConfig) -> Any:
    return AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.name)


def build_model(cfg: ModelConfig, task: TaskConfig) -> Any:
    labels = task.labels
    overrides: dict[str, Any] = dict(cfg.config_overrides)
    if cfg.dropout is not None:
        overrides.update(hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
    if cfg.classifier_dropout is not None:
        overrides["classifier_dropout"] = cfg.classifier_dropout
    config = AutoConfig.from_pretrained(
        cfg.name, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)}, **overrides)
    if cfg.pretrained:
        model = AutoModelForSequenceClassification.from_pretrained(cfg.name, config=config)
    else:
        model = AutoModelForSequenceClassification.from_config(config)
    _freeze(model, cfg)
    return model


def _freeze(model: Any, cfg: ModelConfig) -> None:
    base = model.base_model
    if cfg.freeze_embeddings:
        base.embeddings.requires_grad_(False)
    layers = base.encoder.layer
    if cfg.freeze_layers > len(layers):
        raise ValueError(f"model.freeze_layers is {cfg.freeze_layers} but {cfg.name} has "
                         f"{len(layers)} encoder layers; set it to {len(layers)} or fewer")
    for layer in layers[:cfg.freeze_layers]:
        layer.requires_grad_(False)
