"""Tiny twin of bert_base_news_multilabel.py: any subset of 5 tags per text, on CPU."""

from pathlib import Path

from launcher.recipe import (DataConfig, EvalConfig, ModelConfig, OptimConfig, Recipe, RunConfig,
                             ScaleConfig, TaskConfig)

ROOT = Path(__file__).resolve().parent.parent

recipe = Recipe(
    model=ModelConfig(name=str(ROOT / "models/tiny-bert-tasks"), pretrained=False, dropout=0.0),
    task=TaskConfig(type="multi_label_classification",
                    labels=("politics", "sports", "business", "tech", "health"),
                    class_weights="balanced"),
    data=DataConfig(train=str(ROOT / "data/tiny_multilabel/train.jsonl"),
                    eval=str(ROOT / "data/tiny_multilabel/eval.jsonl"),
                    id_column="id", max_length=64, num_workers=0),
    scale=ScaleConfig(precision="fp32", micro_batch=32),
    optim=OptimConfig(lr=1.5e-3, warmup_ratio=0.05),
    eval=EvalConfig(every=100),
    run=RunConfig(epochs=5, log_every=10),
)
