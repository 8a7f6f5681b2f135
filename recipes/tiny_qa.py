"""Tiny twin of bert_base_squad_v2.py: SQuAD v2 style spans, a third unanswerable, on CPU.

Every context is longer than data.max_length (64), so each example is split into two
overlapping windows and the answer is looked for in both.
"""

from pathlib import Path

from launcher.recipe import (DataConfig, EvalConfig, ModelConfig, OptimConfig, Recipe, RunConfig,
                             ScaleConfig, TaskConfig)

ROOT = Path(__file__).resolve().parent.parent

recipe = Recipe(
    model=ModelConfig(name=str(ROOT / "models/tiny-bert-tasks"), pretrained=False, dropout=0.0),
    task=TaskConfig(type="question_answering", max_answer_length=8),
    data=DataConfig(train=str(ROOT / "data/tiny_qa/train.jsonl"),
                    eval=str(ROOT / "data/tiny_qa/eval.jsonl"),
                    id_column="id", max_length=64, doc_stride=16, num_workers=0),
    scale=ScaleConfig(precision="fp32", micro_batch=32),
    optim=OptimConfig(lr=1.5e-3, warmup_ratio=0.05),
    eval=EvalConfig(every=100),
    run=RunConfig(epochs=12, log_every=10),
)
