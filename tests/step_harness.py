"""The engine's real optimizer step at one world size, for tests/test_step_loss.py.

    python -m torch.distributed.run --standalone --nproc-per-node N tests/step_harness.py OUT

(test_step_loss starts it through tests/torchrun_forked.py, which takes torchrun's arguments.)

For each case (a tiny recipe and overrides) and each micro batch size of SPLITS[N], every rank
builds what the trainer builds: the plan for N ranks (global batch 16: at 1 rank micro batches
of 4 with accumulation 4, or one of 16; at 2 ranks 4 with accumulation 2, or one of 8), the
task, the model from run.seed, the accelerator, the optimizer and the training stream. It runs
2 optimizer steps through `step_loss.train_step`, the trainer's own step. Rank 0 writes to
OUT/world{N}.pt, per case, micro batch size and step: the step's loss, every gradient as the
optimizer was about to apply it (clipping off), and the loss as the engine computed it before
one loss per step (a mean of per-micro-batch means, averaged over ranks), so the test can show
that one would have differed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.utils import set_seed

from launcher import tasks
from launcher.engine import data, packing, step_loss
from launcher.engine.model import build_model, build_tokenizer
from launcher.engine.optim import build_optimizer
from launcher.engine.trainer import build_accelerator
from launcher.plan.build import build
from launcher.recipe.load import load

REPO = Path(__file__).resolve().parent.parent
STEPS = 2
WEIGHTED = ["task.class_weights=0.25,1,2,4", "task.label_smoothing=0.1"]
CASES = {
    # NER tags are mostly 'O': balanced weights are far from uniform.
    "ner_balanced": ("tiny_ner.py", ["task.class_weights=balanced"]),
    "news_weighted": ("tiny_news.py", [*WEIGHTED, "data.packing=false"]),
    "news_weighted_packed": ("tiny_news.py", [*WEIGHTED, "data.packing=true"]),
    # Windows of 40 tokens: an example has 3 or 4, so micro batches hold different counts.
    "qa": ("tiny_qa.py", ["data.max_length=40", "data.doc_stride=10"]),
}
# world -> micro batch sizes: every step is 16 examples, split as accumulation only (1 x 4 x 4),
# not at all (1 x 1 x 16: the whole step in one forward), across ranks only (2 x 1 x 8) and both
# (2 x 2 x 4).
SPLITS = {1: (4, 16), 2: (4, 8)}
COMMON = ["scale.strategy=ddp", "scale.precision=fp32", "scale.global_batch=16",
          f"run.max_steps={STEPS}", "run.epochs=none", "model.dropout=0.0",
          "model.classifier_dropout=0.0", "data.num_workers=0", "optim.max_grad_norm=0",
          "optim.warmup_ratio=0"]


def run_case(recipe: str, overrides: list[str], micro_batch: int, world: int, rank: int,
             out: Path, acc=None):
    loaded = load(REPO / "recipes" / recipe, [*COMMON, *overrides,
                                              f"scale.micro_batch={micro_batch}",
                                              f"scale.procs_per_node={world}"])
    plan = build(loaded, run_dir=str(out / "unused"))
    task = tasks.for_recipe(plan.recipe)
    set_seed(plan.recipe.run.seed)
    tokenizer = build_tokenizer(plan.recipe.model)
    model = build_model(plan.recipe.model, task)
    pooler = packing.install(model) if plan.recipe.data.packing else None
    acc = acc or build_accelerator(plan, out)
    # One accelerator for every case and split, as build_accelerator would make it for this
    # split's accumulation, its count of micro batches back at 0 (a second accelerator in this
    # process would need accelerate's singletons reset).
    acc.gradient_accumulation_steps = plan.grad_accum
    acc.step = 0
    weights = (None if plan.class_weights is None else
               torch.tensor(plan.class_weights, dtype=torch.float32, device=acc.device))
    optimizer = build_optimizer(model, plan.recipe.optim)
    model, optimizer = acc.prepare(model, optimizer)
    names = {p: n for n, p in acc.unwrap_model(model).named_parameters()}
    grads: list[dict[str, torch.Tensor]] = []
    optimizer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.append(
        {names[p]: p.grad.detach().clone() for g in opt.param_groups for p in g["params"]
         if p.grad is not None}))
    # The old loss is read off the step's own forwards: each micro batch's mean, as the
    # engine used to backpropagate it.
    means: list[torch.Tensor] = []
    loss_sum = task.loss_sum

    def recording_loss_sum(outputs, labels, w):
        total = loss_sum(outputs, labels, w)
        means.append(total.detach().double() / task.units(labels, w))
        return total

    task.loss_sum = recording_loss_sum
    batches = data.train_batches(plan, task, tokenizer, rank, world)
    losses, old = [], []
    for _ in range(STEPS):
        micro = [{k: v.to(acc.device) for k, v in next(batches)[1]["inputs"].items()}
                 for _ in range(plan.grad_accum)]
        means.clear()
        share = step_loss.train_step(acc, model, optimizer, task, micro, weights, pooler=pooler,
                                     max_grad_norm=plan.recipe.optim.max_grad_norm)
        losses.append(_sum(share).item())
        old.append((_sum(torch.stack(means).sum()) / (len(micro) * world)).item())
    assert len(grads) == STEPS, len(grads)
    return acc, {"loss": losses, "old_loss": old, "grads": grads,
                 "grad_norm": [torch.linalg.vector_norm(torch.stack(
                     [g.norm() for g in step.values()])).item() for step in grads]}


def _sum(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def main(out: Path) -> None:
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    # One thread per rank, as torchrun sets for several ranks: for one, accelerate would set
    # two, and on a loaded machine idle threads spinning cost a step 10x its time.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    results, acc = {}, None
    for name, (recipe, overrides) in CASES.items():
        results[name] = {}
        for micro_batch in SPLITS[world]:
            acc, results[name][micro_batch] = run_case(recipe, overrides, micro_batch, world,
                                                       rank, out, acc)
    if rank == 0:
        torch.save(results, out / f"world{world}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
