"""Tiny twin of bert_base_conll2003.py: BIO tags for PER, LOC, ORG, MISC, on CPU.

Some names are not in the tiny vocabulary and split into several word pieces, so the
first-piece label alignment is exercised.
"""

from pathlib import Path

from launcher.recipe import (DataConfig, EvalConfig, ModelConfig, OptimConfig, Recipe, RunConfig,
                             ScaleConfig, TaskConfig)

ROOT = Path(__file__).resolve().parent.parent

recipe = Recipe(
    model=ModelConfig(name=str(ROOT / "models/tiny-bert-tasks"), pretrained=False, dropout=0.0),
    task=TaskConfig(type="token_classification",
                    labels=("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC",
                            "I-MISC")),
    data=DataConfig(train=str(ROOT / "data/tiny_ner/train.jsonl"),
                    eval=str(ROOT / "data/tiny_ner/eval.jsonl"),
                    id_column="id", max_length=64, num_workers=0),
    scale=ScaleConfig(precision="fp32", micro_batch=32),
    optim=OptimConfig(lr=1.5e-3, warmup_ratio=0.05),
    eval=EvalConfig(every=100),
    run=RunConfig(epochs=4, log_every=10),
)
