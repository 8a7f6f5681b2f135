"""BERT-base on IMDB movie reviews (binary sentiment), 1 node x 4 GPUs, DDP, bf16.

Reviews are long: 512 tokens keeps most of each one. 25,000 train and 25,000 test reviews.

    python -m launcher run recipes/bert_base_imdb.py
"""

from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                             Recipe, RunConfig, ScaleConfig, TaskConfig)

recipe = Recipe(
    model=ModelConfig(name="bert-base-uncased"),
    task=TaskConfig(type="sequence_classification", labels=("neg", "pos")),
    data=DataConfig(
        train="imdb",
        eval_split="test",
        text_column="text",
        label_column="label",
        max_length=512,
        train_examples=25_000,  # plans the epochs without reaching the hub
        num_workers=2,
    ),
    scale=ScaleConfig(nodes=1, procs_per_node=4, strategy="ddp", precision="bf16",
                      micro_batch=8, global_batch=32),
    optim=OptimConfig(lr=2e-5, warmup_ratio=0.1, scheduler="linear"),
    checkpoint=CheckpointConfig(every=250, keep_last=2),
    eval=EvalConfig(every=250, metric="accuracy"),
    run=RunConfig(epochs=2, log_every=20),
)
