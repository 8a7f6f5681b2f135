"""Generate the tiny_news dataset and the tiny BERT that the default recipe trains.

Four topics like AG News (World, Sports, Business, Sci/Tech). Each headline mixes words of its
topic with common filler and, now and then, a word from another topic, so the task is
learnable but not trivial. The tokenizer is a WordPiece vocabulary of exactly these words, so
no hub download is needed. Deterministic: running it again writes the same files.

    python scripts/make_tiny_news.py   # writes data/tiny_news/ and models/tiny-bert/
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("World", "Sports", "Business", "Sci/Tech")
TOPIC_WORDS = {
    "World": "president minister election parliament embassy treaty border refugees protest "
             "government troops ceasefire diplomat summit sanctions capital rebels vote "
             "united nations kingdom republic talks crisis peace war military leader region "
             "opposition coalition envoy",
    "Sports": "match team coach season league goal striker championship tournament cup "
              "olympic medal score victory defeat player injury stadium final semifinal "
              "referee transfer captain innings marathon race title fans squad playoff",
    "Business": "shares stocks market profit revenue earnings investors bank merger "
                "acquisition quarter economy inflation prices oil dollar trade retail "
                "company ceo deal growth sales bonds interest rates forecast dividend "
                "startup layoffs",
    "Sci/Tech": "software internet computer chip scientists research space nasa satellite "
                "microsoft google apple browser network wireless phone data security virus "
                "robot genome telescope laptop processor online users launch update",
}
FILLER = ("the a an of in on at to for with from after before over new says report "
          "week year today monday tuesday friday first second big amid as its their "
          "announced expected plans latest early late major top officials sources "
          "near record amid against while more than by under").split()
CONNECT = ["{a} {b} {c}", "{a} {b} {f} {c}", "{f} {a} {f} {b} {c}", "{a} {f} {b} {f} {c} {d}"]


def headline(rng: random.Random, topic: str) -> str:
    own = TOPIC_WORDS[topic].split()
    words = rng.sample(own, rng.randint(2, 4))
    if rng.random() < 0.35:  # a distractor from another topic
        other = rng.choice([t for t in LABELS if t != topic])
        words.append(rng.choice(TOPIC_WORDS[other].split()))
    words += rng.sample(FILLER, rng.randint(4, 12))
    rng.shuffle(words)
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", "", " !", " ?"])


def examples(rng: random.Random, n: int, start_id: int) -> list[dict]:
    rows = []
    for i in range(n):
        label = rng.randrange(len(LABELS))
        topic = LABELS[label]
        if rng.random() < 0.04:  # label noise keeps accuracy off 100%
            label = rng.randrange(len(LABELS))
        rows.append({"id": f"tn-{start_id + i:05d}", "text": headline(rng, topic), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tokenizer_and_config(model_dir: Path) -> None:
    words = sorted({w for text in TOPIC_WORDS.values() for w in text.split()} | set(FILLER))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!", "?", ",", "/", "-"]
    vocab += [w for w in words if w not in vocab]
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    write_tiny_bert(model_dir, vocab, "BertForSequenceClassification")


def write_tiny_bert(model_dir: Path, vocab: list[str], architecture: str) -> None:
    """A WordPiece vocabulary, its tokenizer config and a 2-layer, 64-wide BERT config."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]"}, indent=2) + "\n")
    (model_dir / "config.json").write_text(json.dumps({
        "architectures": [architecture], "model_type": "bert",
        "vocab_size": len(vocab), "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 128, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 128, "type_vocab_size": 2, "initializer_range": 0.02,
        "layer_norm_eps": 1e-12, "pad_token_id": 0}, indent=2) + "\n")


def main() -> None:
    rng = random.Random(20261123)
    write_jsonl(ROOT / "data/tiny_news/train.jsonl", examples(rng, 4000, 0))
    # 1001 eval rows: divisible by neither 2, 3 nor any power-of-two batch, on purpose.
    write_jsonl(ROOT / "data/tiny_news/eval.jsonl", examples(rng, 1001, 4000))
    write_tokenizer_and_config(ROOT / "models/tiny-bert")


if __name__ == "__main__":
    main()
