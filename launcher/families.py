"""The encoder families the engine trains, and where each keeps what the engine touches.

One row per family, keyed by `config.model_type`: the modules frozen by model.freeze_*, the
config names model.dropout and model.classifier_dropout set, the block FSDP wraps, where the
pooled heads read the sequence (for data.packing), whether it takes token type ids and how its
absolute positions count. The plan reads the model's config.json (no torch, no transformers)
and refuses a type outside the table in one line; the engine reads the same row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from launcher.errors import RecipeError


@dataclass(frozen=True)
class Family:
    name: str
    # model_type -> the class of one transformer block (what FSDP wraps)
    blocks: dict[str, str]
    # module paths under the base model
    embeddings: tuple[str, ...]     # what model.freeze_embeddings freezes (absent ones skipped)
    layers: str                     # the list of blocks model.freeze_layers counts
    # config names
    dropout: tuple[str, ...]        # model.dropout sets all of them
    classifier_dropout: tuple[str, ...]
    layers_field: str = "num_hidden_layers"
    # Packing: the module (under the base model; "" = the base model) whose output the pooled
    # head reads, before any pooler of its own (BERT and ALBERT pool inside the base model).
    pool_at: str = ""
    token_types: bool = True        # forward takes token_type_ids (used when type_vocab_size > 1)
    # Absolute position ids of an example's first token: 0, or padding_idx + 1 (RoBERTa).
    positions_after_pad: bool = False
    # ModernBERT: alternating global / sliding-window layers get a mask each.
    sliding_window: bool = False
    # DeBERTa: its embeddings multiply by a [rows, T] token mask (the attention mask passed
    # on); a packed batch gives them none (pad embeddings are never attended to either way).
    embeddings_mask: Optional[str] = None


_BERT_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob")

FAMILIES = (
    Family("BERT", {"bert": "BertLayer"}, ("embeddings",), "encoder.layer",
           _BERT_DROPOUT, ("classifier_dropout",), pool_at="encoder"),
    Family("RoBERTa", {"roberta": "RobertaLayer", "xlm-roberta": "XLMRobertaLayer",
                       "camembert": "CamembertLayer"},
           ("embeddings",), "encoder.layer", _BERT_DROPOUT, ("classifier_dropout",),
           positions_after_pad=True),
    Family("DistilBERT", {"distilbert": "TransformerBlock"}, ("embeddings",), "transformer.layer",
           ("dropout", "attention_dropout"), ("seq_classif_dropout", "qa_dropout"),
           layers_field="n_layers", token_types=False),
    Family("ALBERT", {"albert": "AlbertLayer"},
           ("embeddings", "encoder.embedding_hidden_mapping_in"), "encoder.albert_layer_groups",
           _BERT_DROPOUT, ("classifier_dropout_prob",), pool_at="encoder"),
    Family("ELECTRA", {"electra": "ElectraLayer"}, ("embeddings", "embeddings_project"),
           "encoder.layer", _BERT_DROPOUT, ("classifier_dropout",)),
    Family("DeBERTa-v2/v3", {"deberta-v2": "DebertaV2Layer"}, ("embeddings",), "encoder.layer",
           _BERT_DROPOUT, ("pooler_dropout", "cls_dropout"), embeddings_mask="mask"),
    Family("ModernBERT", {"modernbert": "ModernBertEncoderLayer"}, ("embeddings",), "layers",
           ("embedding_dropout", "attention_dropout", "mlp_dropout"), ("classifier_dropout",),
           token_types=False, sliding_window=True),
)
BY_TYPE = {t: f for f in FAMILIES for t in f.blocks}


def supported() -> str:
    return ", ".join(BY_TYPE)


def for_type(model_type: Optional[str], field: str = "model.name") -> Family:
    family = BY_TYPE.get(model_type or "")
    if family is None:
        raise RecipeError(field, f"is a '{model_type}' model; launcher trains these model types: "
                          f"{supported()}", "use a model of one of those types")
    return family


def block_class(model_type: str) -> str:
    return for_type(model_type).blocks[model_type]


def read_config(name: str) -> Optional[dict]:
    """A model's config.json as a dict, from a local directory or the HF cache; None when
    neither has it (a hub name not downloaded yet)."""
    local = Path(name).expanduser() / "config.json"
    if local.is_file():
        return _json_object(local)
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - not a repo id, no cache: the engine will load it
        return None
    return _json_object(Path(cached)) if isinstance(cached, str) else None


def _json_object(path: Path) -> Optional[dict]:
    # A config.json that is no JSON object is refused, in one line naming it, when the model
    # is resolved before launch (plan/model_source.py); here it is only "unknown".
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def num_layers(family: Family, config: dict) -> int:
    return int(config.get(family.layers_field, 0))


def freezable_layers(family: Family, config: dict) -> Optional[int]:
    """How many blocks model.freeze_layers may name; None when blocks share weights
    (ALBERT with fewer layer groups than layers: freezing layer 0 freezes them all)."""
    if family.name == "ALBERT":
        groups = int(config.get("num_hidden_groups", 1))
        return groups if groups == num_layers(family, config) else None
    return num_layers(family, config)


def check(recipe: Any) -> Optional[Family]:
    """Planning-time refusals for this model and recipe (one line each); the family, or None
    when the model's config cannot be read before launch (the engine checks it then)."""
    if recipe.model.head_hidden is not None and recipe.task.type == "question_answering":
        raise RecipeError("model.head_hidden", "adds a layer to a classification head; "
                          "question_answering's span head has none", "remove model.head_hidden")
    config = read_config(recipe.model.name)
    if config is None:
        return None
    family = for_type(config.get("model_type"))
    config = {**config, **dict(recipe.model.config_overrides)}
    check_freeze(recipe.model, family, config)
    if recipe.data.packing and config.get("conv_kernel_size", 0) > 0:
        raise RecipeError("data.packing", f"{recipe.model.name} has a convolution over "
                          f"neighbouring tokens (conv_kernel_size {config['conv_kernel_size']}), "
                          "which would mix the examples of a packed row", "set data.packing=false")
    return family


def check_freeze(m: Any, family: Family, config: dict) -> None:
    if not m.freeze_layers or m.freeze_encoder:
        return
    n = freezable_layers(family, config)
    if n is None:
        raise RecipeError("model.freeze_layers", f"is {m.freeze_layers} but {m.name} is an "
                          "ALBERT whose layers share one set of weights (num_hidden_groups < "
                          "num_hidden_layers), so the first layers cannot be frozen alone",
                          "use model.freeze_encoder or model.freeze_embeddings")
    if m.freeze_layers > n:
        raise RecipeError("model.freeze_layers", f"is {m.freeze_layers} but {m.name} has {n} "
                          "encoder layers", f"set it to {n} or fewer, or use "
                          "model.freeze_encoder")
