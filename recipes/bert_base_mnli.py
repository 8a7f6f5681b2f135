"""BERT-base on MultiNLI: premise + hypothesis -> entailment / neutral / contradiction.

Sentence pairs are encoded as [CLS] premise [SEP] hypothesis [SEP]; 2 nodes x 4 GPUs, ZeRO-1.
Evaluation uses validation_matched (9,815 pairs).

    python -m launcher run recipes/bert_base_mnli.py --nodes 2
"""

from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                             Recipe, RunConfig, ScaleConfig, TaskConfig)

recipe = Recipe(
    model=ModelConfig(name="bert-base-uncased"),
    task=TaskConfig(type="sequence_classification",
                    labels=("entailment", "neutral", "contradiction")),
    data=DataConfig(
        train="glue",
        dataset_config="mnli",
        eval_split="validation_matched",
        text_column="premise",
        text_pair_column="hypothesis",
        label_column="label",
        id_column="idx",
        max_length=128,
        train_examples=392_702,
        num_workers=2,
    ),
    scale=ScaleConfig(nodes=2, procs_per_node=4, strategy="zero1", precision="bf16",
                      micro_batch=32, global_batch=256),
    optim=OptimConfig(lr=3e-5, warmup_ratio=0.06, scheduler="linear"),
    checkpoint=CheckpointConfig(every=1000, keep_last=2),
    eval=EvalConfig(every=1000),
    run=RunConfig(epochs=3, log_every=50),
)
