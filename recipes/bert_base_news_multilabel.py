"""BERT-base tagging news articles with any number of topics (multi-label, BCE-with-logits).

News tagging sets are usually in-house: this recipe reads JSONL files from shared storage,
one article per line, {"id": ..., "text": ..., "labels": ["business", "tech"]} (an empty list
when no tag applies). Rare tags get more weight ('balanced' = negatives / positives per tag,
counted in data.train before the job is queued). 1 node x 4 GPUs.

    python -m launcher run recipes/bert_base_news_multilabel.py data.train=/path/train.jsonl \\
        data.eval=/path/eval.jsonl
"""

from launcher.recipe import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig,
                             Recipe, RunConfig, ScaleConfig, TaskConfig)

recipe = Recipe(
    model=ModelConfig(name="bert-base-uncased", classifier_dropout=0.1),
    task=TaskConfig(type="multi_label_classification",
                    labels=("politics", "business", "tech", "sports", "health", "science",
                            "entertainment", "world"),
                    class_weights="balanced", threshold=0.5),
    data=DataConfig(
        train="/datasets/news_tags/train.jsonl",
        eval="/datasets/news_tags/eval.jsonl",
        text_column="text",
        label_column="labels",
        id_column="id",
        max_length=256,
    ),
    scale=ScaleConfig(nodes=1, procs_per_node=4, strategy="ddp", precision="bf16",
                      micro_batch=16, global_batch=64),
    optim=OptimConfig(lr=3e-5, warmup_ratio=0.1, scheduler="cosine"),
    checkpoint=CheckpointConfig(every=500, keep_last=2),
    eval=EvalConfig(every=500, metric="micro_f1", early_stopping_patience=3),
    run=RunConfig(epochs=4, log_every=50),
)
