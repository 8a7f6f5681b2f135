"""BERT-base on SQuAD v2: extractive answers, a third of the questions unanswerable.

Contexts longer than 384 tokens are split into windows overlapping by 128; the best span over
all windows competes with the null ([CLS]) score. Scored with SQuAD v2's exact match and F1
(HasAns / NoAns split). 1 node x 8 GPUs, ZeRO-2.

    python -m launcher run recipes/bert_base_squad_v2.py
"""

from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                             Recipe, RunConfig, ScaleConfig, TaskConfig)

recipe = Recipe(
    model=ModelConfig(name="bert-base-uncased"),
    task=TaskConfig(type="question_answering", max_answer_length=30, null_threshold=0.0),
    data=DataConfig(
        train="rajpurkar/squad_v2",
        eval_split="validation",
        text_column="question",
        text_pair_column="context",
        label_column="answers",
        id_column="id",
        max_length=384,
        doc_stride=128,
        train_examples=130_319,
        num_workers=2,
    ),
    scale=ScaleConfig(nodes=1, procs_per_node=8, strategy="zero2", precision="bf16",
                      micro_batch=12, global_batch=96),
    optim=OptimConfig(lr=5e-5, warmup_ratio=0.1, scheduler="linear"),
    checkpoint=CheckpointConfig(every=500, keep_last=2),
    eval=EvalConfig(every=1000, micro_batch=32),
    run=RunConfig(epochs=2, log_every=50),
)
