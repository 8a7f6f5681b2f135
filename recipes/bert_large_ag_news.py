"""BERT-large on AG News as a user writes it: 2 nodes x 8 GPUs, ZeRO-2, bf16.

    python -m launcher render recipes/bert_large_ag_news.py --out plan/   # works offline
"""

from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                             Recipe, RunConfig, ScaleConfig, TaskConfig)

recipe = Recipe(
    model=ModelConfig(name="bert-large-uncased", classifier_dropout=0.1),
    task=TaskConfig(labels=("World", "Sports", "Business", "Sci/Tech")),
    data=DataConfig(
        train="ag_news",
        train_split="train",
        eval_split="test",
        text_column="text",
        label_column="label",
        max_length=128,
        train_examples=120_000,  # AG News train split; plans steps without reaching the hub
        num_workers=2,
    ),
    scale=ScaleConfig(nodes=2, procs_per_node=8, strategy="zero2", precision="bf16",
                      micro_batch=32, global_batch=512),
    optim=OptimConfig(lr=2e-5, weight_decay=0.01, warmup_ratio=0.06, scheduler="linear"),
    checkpoint=CheckpointConfig(every=200, keep_last=3),
    eval=EvalConfig(every=200),
    run=RunConfig(epochs=2, seed=42, log_every=20),
)
