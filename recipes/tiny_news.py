"""The embedded default: a 2-layer BERT learns four news topics on CPU in about a minute.

Data and tokenizer ship in the repository (scripts/make_tiny_news.py made them), so this runs
with no hub and no GPU:  python -m launcher run recipes/tiny_news.py
"""

from pathlib import Path

from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                             Recipe, RunConfig, ScaleConfig, TaskConfig)

ROOT = Path(__file__).resolve().parent.parent

recipe = Recipe(
    model=ModelConfig(name=str(ROOT / "models/tiny-bert"), pretrained=False),
    task=TaskConfig(labels=("World", "Sports", "Business", "Sci/Tech")),
    data=DataConfig(
        train=str(ROOT / "data/tiny_news/train.jsonl"),
        eval=str(ROOT / "data/tiny_news/eval.jsonl"),
        id_column="id",
        max_length=64,
        num_workers=0,
    ),
    scale=ScaleConfig(procs_per_node=1, strategy="ddp", precision="fp32", micro_batch=32),
    optim=OptimConfig(lr=3e-3, weight_decay=0.01, warmup_ratio=0.05, scheduler="linear"),
    checkpoint=CheckpointConfig(every=100, keep_last=2),
    eval=EvalConfig(every=100),
    run=RunConfig(epochs=2, seed=42, log_every=10),
)
