"""BERT-base on SST-2 (GLUE, binary sentiment of single sentences), 1 node x 2 GPUs, bf16.

GLUE's test labels are hidden, so evaluation uses the 872-sentence validation split.

    python -m launcher run recipes/bert_base_sst2.py
"""

from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                             Recipe, RunConfig, ScaleConfig, TaskConfig)

recipe = Recipe(
    model=ModelConfig(name="bert-base-uncased"),
    task=TaskConfig(type="sequence_classification", labels=("negative", "positive")),
    data=DataConfig(
        train="glue",
        dataset_config="sst2",
        eval_split="validation",
        text_column="sentence",
        label_column="label",
        id_column="idx",
        max_length=64,
        train_examples=67_349,
    ),
    scale=ScaleConfig(nodes=1, procs_per_node=2, strategy="ddp", precision="bf16",
                      micro_batch=16, global_batch=32),
    optim=OptimConfig(lr=2e-5, warmup_ratio=0.06, scheduler="linear"),
    checkpoint=CheckpointConfig(every=500, keep_last=2),
    eval=EvalConfig(every=500, metric="accuracy", early_stopping_patience=4),
    run=RunConfig(epochs=3, log_every=50),
)
