"""Per-GPU memory for model states, per strategy, before anything runs (no torch).

Model states are counted as in the ZeRO paper (Rajbhandari et al. 2020, section 3): Psi
parameters, trained with Adam, cost
  fp32 training or torch AMP (ddp, fsdp; bf16/fp16 autocast keeps fp32 weights):
      weights 4 Psi + gradients 4 Psi + Adam moments 8 Psi
  DeepSpeed mixed precision (zero*): weights 2 Psi + gradients 2 Psi + fp32 master weights
      and moments 12 Psi
and a strategy divides some of them by the world size N: zero1 the optimizer states, zero2
also the gradients, zero3 and fsdp everything; zero3_offload keeps only its weight shard on
the GPU. Activations are added as an estimate for one micro batch at full length (Korthikanti
et al. 2022: 34 h + 5 a s bytes per token per layer in 16 bit, twice that in fp32), so the
total is a bound to plan with, not a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from launcher.recipe.schema import STRATEGIES

GIB = 1024 ** 3

# GPU memory as the cards report it (GiB), by the names a recipe may use.
GPUS = {"H200-141GB": 141, "H100-80GB": 80, "H100-94GB": 94, "A100-80GB": 80,
        "A100-40GB": 40, "L40S-48GB": 48, "A6000-48GB": 48, "A10-24GB": 24, "L4-24GB": 24,
        "RTX4090-24GB": 24, "V100-32GB": 32, "V100-16GB": 16, "T4-16GB": 16}

# Shapes of common hub models, so a plan can be sized with no network and no cache.
KNOWN = {
    "bert-base-uncased": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                              intermediate_size=3072, num_attention_heads=12),
    "bert-large-uncased": dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24,
                               intermediate_size=4096, num_attention_heads=16),
    "roberta-base": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                         intermediate_size=3072, num_attention_heads=12,
                         max_position_embeddings=514, type_vocab_size=1),
    "roberta-large": dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                          intermediate_size=4096, num_attention_heads=16,
                          max_position_embeddings=514, type_vocab_size=1),
}
KNOWN["bert-base-cased"] = dict(KNOWN["bert-base-uncased"], vocab_size=28996)
KNOWN["bert-large-cased"] = dict(KNOWN["bert-large-uncased"], vocab_size=28996)


@dataclass(frozen=True)
class Shape:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2


def shape_of(model: Any) -> Optional[Shape]:
    """The encoder's shape from a local config.json, the table above or the HF cache."""
    from launcher.errors import RecipeError

    config: Any = None
    local = Path(model.name) / "config.json"
    if local.is_file():
        config = read_config(local, "model.name")
    elif model.name in KNOWN:
        config = KNOWN[model.name]
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(model.name, "config.json")
        except Exception:  # not installed, or a name that is no hub id (planning says so)
            cached = None
        if isinstance(cached, str):
            config = read_config(Path(cached), "model.name")
    if config is None:
        return None
    overrides = dict(model.config_overrides)
    config = {**config, **overrides}
    fields = Shape.__dataclass_fields__
    for key in fields:
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            field = "model.config_overrides" if key in overrides else "model.name"
            raise RecipeError(field, f"{key} is {value!r}, not a whole number of 0 or more",
                              f"give {key} as a whole number, e.g. {{\"{key}\": 4}}")
    return Shape(**{k: config[k] for k in fields if k in config})


def read_config(path: Path, field: str) -> dict:
    from launcher.errors import RecipeError

    try:
        config = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise RecipeError(field, f"{path} is not a readable JSON config ({err})",
                          "write config.json again (save_pretrained does)") from None
    if not isinstance(config, dict):
        raise RecipeError(field, f"{path} is not a JSON object", "write config.json again")
    return config


def parameters(shape: Shape, num_labels: int, head: str, head_hidden: Optional[int]) -> int:
    """BERT-family parameter count: embeddings, layers, pooler and the task's head."""
    h, i = shape.hidden_size, shape.intermediate_size
    embeddings = (shape.vocab_size + shape.max_position_embeddings + shape.type_vocab_size) * h \
        + 2 * h
    layer = 4 * h * h + 4 * h + 2 * h + 2 * h * i + i + h + 2 * h
    pooler = h * h + h if head == "sequence" else 0
    if head_hidden:
        classifier = h * head_hidden + head_hidden + head_hidden * num_labels + num_labels
    else:
        classifier = h * num_labels + num_labels
    return embeddings + shape.num_hidden_layers * layer + pooler + classifier


def model_state_bytes(psi: int, strategy: str, precision: str, world: int) -> dict[str, float]:
    """Weights, gradients and optimizer states on one GPU, in bytes."""
    deepspeed_mixed = strategy.startswith("zero") and precision != "fp32"
    w, g, o = (2, 2, 12) if deepspeed_mixed else (4, 4, 8)
    n = world
    split = {"ddp": (1, 1, 1), "zero1": (1, 1, n), "zero2": (1, n, n), "zero3": (n, n, n),
             "fsdp": (n, n, n), "zero3_offload": (n, None, None)}[strategy]
    out = {"weights": w * psi / split[0]}
    out["gradients"] = 0.0 if split[1] is None else g * psi / split[1]
    out["optimizer"] = 0.0 if split[2] is None else o * psi / split[2]
    return out


def activation_bytes(shape: Shape, micro_batch: int, seq: int, precision: str) -> float:
    per_token_layer = 34 * shape.hidden_size + 5 * shape.num_attention_heads * seq
    scale = 2 if precision == "fp32" else 1
    return scale * shape.num_hidden_layers * micro_batch * seq * per_token_layer


@dataclass
class Estimate:
    strategy: str
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def estimate(plan: Any, task: Any) -> Optional[tuple[int, list[Estimate]]]:
    """(parameters, one estimate per strategy) for the plan's world size; None if the
    model's shape cannot be found offline."""
    r = plan.recipe
    shape = shape_of(r.model)
    if shape is None:
        return None
    head = {"sequence_classification": "sequence", "multi_label_classification": "sequence",
            "token_classification": "token", "question_answering": "span"}[r.task.type]
    num_labels = 2 if head == "span" else max(1, len(task.labels))
    psi = parameters(shape, num_labels, head, r.model.head_hidden)
    act = activation_bytes(shape, r.scale.micro_batch, r.data.max_length, r.scale.precision)
    rows = [Estimate(s, **model_state_bytes(psi, s, r.scale.precision, plan.world_size),
                     activations=act) for s in STRATEGIES]
    return psi, rows


def gpu_gib(name: Optional[str]) -> Optional[float]:
    return None if name is None else GPUS.get(name)


def fit_warning(plan: Any, task: Any) -> Optional[str]:
    """A line to print before launch when the recipe's strategy will not fit its GPU."""
    cap = gpu_gib(plan.recipe.scale.gpu)
    found = estimate(plan, task) if cap else None
    if not found:
        return None
    _, rows = found
    mine = next(e for e in rows if e.strategy == plan.recipe.scale.strategy)
    if mine.total / GIB <= cap:
        return None
    fits = [e.strategy for e in rows if e.total / GIB <= cap]
    return (f"scale.strategy={mine.strategy} needs about {mine.total / GIB:.1f} GiB per GPU "
            f"(model states {(mine.total - mine.activations) / GIB:.1f} + activations "
            f"{mine.activations / GIB:.1f}) but scale.gpu={plan.recipe.scale.gpu} has {cap} GiB; "
            + (f"{', '.join(fits)} would fit" if fits else "lower scale.micro_batch or use "
               "more GPUs"))
