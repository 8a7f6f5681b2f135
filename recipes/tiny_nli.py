"""Tiny twin of bert_base_mnli.py: sentence pairs (premise, hypothesis) -> 3 classes, on CPU.

Data and tokenizer ship in the repository (scripts/make_tiny_tasks.py made them).
"""

from pathlib import Path

from launcher.recipe import (DataConfig, EvalConfig, ModelConfig, OptimConfig, Recipe, RunConfig,
                             ScaleConfig, TaskConfig)

ROOT = Path(__file__).resolve().parent.parent

recipe = Recipe(
    model=ModelConfig(name=str(ROOT / "models/tiny-bert-tasks"), pretrained=False, dropout=0.0),
    task=TaskConfig(type="sequence_classification",
                    labels=("entailment", "neutral", "contradiction")),
    data=DataConfig(train=str(ROOT / "data/tiny_nli/train.jsonl"),
                    eval=str(ROOT / "data/tiny_nli/eval.jsonl"),
                    text_column="premise", text_pair_column="hypothesis", id_column="id",
                    max_length=64, num_workers=0),
    scale=ScaleConfig(precision="fp32", micro_batch=32),
    optim=OptimConfig(lr=1.5e-3, warmup_ratio=0.05),
    eval=EvalConfig(every=150),
    run=RunConfig(epochs=10, log_every=10),
)
