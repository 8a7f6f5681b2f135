"""Write data/tiny_news/train_sorted.jsonl: tiny_news's training rows sorted by label.

Real splits often come sorted (HF's imdb train split is all negative reviews, then all
positive); this fixture is one. The same rows as train.jsonl, all World first, then Sports,
Business and Sci/Tech (file order kept within a label). Deterministic.

    python scripts/make_sorted_news.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    src = ROOT / "data/tiny_news/train.jsonl"
    lines = [line for line in src.read_text().splitlines() if line.strip()]
    rows = sorted(lines, key=lambda line: json.loads(line)["label"])  # stable
    (ROOT / "data/tiny_news/train_sorted.jsonl").write_text("\n".join(rows) + "\n")
    print(f"wrote {len(rows)} rows sorted by label to data/tiny_news/train_sorted.jsonl")


if __name__ == "__main__":
    main()
