"""Inputs for `launcher bench --synthetic`: a model of the recipe's shape with random weights,
and rows whose token lengths are drawn like AG News, for when the hub cannot be reached.

Throughput depends on the shape of the model and the lengths of the rows, not on the weights
or the words. Each row is made of words that are whole entries of a generated WordPiece
vocabulary, so a row of L tokens ([CLS] and [SEP] included) is L - 2 words, and the lengths
the engine sees are exactly the ones drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from launcher.errors import RecipeError
from launcher.plan.memory import shape_of
from launcher.recipe.schema import Recipe

LENGTH_MODEL = ("AG-News-like: tokens per row (with [CLS] and [SEP]) = exp(N(ln 50, 0.3)), "
                "rounded down, clipped to 12..200, truncated at data.max_length (mean 51.8 at 128)")
_WORDS = 4000


def lengths(n: int, max_length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    drawn = np.exp(rng.normal(math.log(50), 0.3, size=n)).astype(np.int64)
    return np.minimum(np.clip(drawn, 12, 200), max_length)


def write_model(recipe: Recipe, out: Path) -> Path:
    """A directory with the recipe model's config (random weights) and a generated tokenizer."""
    shape = shape_of(recipe.model)
    if shape is None:
        raise RecipeError("model.name", f"{recipe.model.name!r}: its shape is neither in a local "
                          "config.json, nor in launcher's table of common models, nor in the "
                          "HF cache", "point model.name at a directory with its config.json")
    from transformers import AutoConfig, BertTokenizerFast

    local = Path(recipe.model.name) / "config.json"
    model_type = json.loads(local.read_text()).get("model_type", "bert") if local.is_file() \
        else ("roberta" if "roberta" in recipe.model.name else "bert")
    out.mkdir(parents=True, exist_ok=True)
    words = min(_WORDS, shape.vocab_size - 5)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(words)]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt")).save_pretrained(out)
    config = AutoConfig.for_model(model_type, **vars(shape), pad_token_id=0)
    config.save_pretrained(out)
    return out


def write_rows(path: Path, model_dir: Path, n: int, max_length: int, num_labels: int,
               seed: int) -> Path:
    """JSONL rows: id, text (L - 2 words of model_dir's vocabulary), label (an id)."""
    rng = np.random.default_rng(seed + 1)
    words = np.array([w for w in (model_dir / "vocab.txt").read_text().split()
                      if not w.startswith("[")])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i, length in enumerate(lengths(n, max_length, seed)):
            text = " ".join(words[rng.integers(0, len(words), size=int(length) - 2)])
            fh.write(json.dumps({"id": f"s{i}", "text": text,
                                 "label": int(rng.integers(0, num_labels))}) + "\n")
    return path
