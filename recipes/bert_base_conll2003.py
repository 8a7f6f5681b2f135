"""BERT-base (cased: capitals matter for names) on CoNLL-2003 named entities, BIO tags.

Tags are aligned to word pieces (first piece of a word carries the tag); metrics are
entity-level precision / recall / F1 as seqeval computes them. 1 node x 2 GPUs.

    python -m launcher run recipes/bert_base_conll2003.py
"""

from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                             Recipe, RunConfig, ScaleConfig, TaskConfig)

recipe = Recipe(
    model=ModelConfig(name="bert-base-cased"),
    # The dataset's ner_tags ids, in its order.
    task=TaskConfig(type="token_classification",
                    labels=("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC",
                            "I-MISC")),
    data=DataConfig(
        train="eriktks/conll2003",
        eval_split="validation",
        text_column="tokens",
        label_column="ner_tags",
        id_column="id",
        max_length=128,
        train_examples=14_041,
    ),
    scale=ScaleConfig(nodes=1, procs_per_node=2, strategy="ddp", precision="bf16",
                      micro_batch=16, global_batch=32),
    optim=OptimConfig(lr=3e-5, warmup_ratio=0.1, scheduler="linear"),
    checkpoint=CheckpointConfig(every=200, keep_last=2),
    eval=EvalConfig(every=200),
    run=RunConfig(epochs=3, log_every=20),
)
