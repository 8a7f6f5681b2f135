"""One loss per optimizer step: the mean over the step's labelled units, at any split.

A step's loss is the summed loss of its labelled units (examples, labelled tokens, QA
windows, multi-label decisions; with class weights, a weighted sum) over every micro batch
of every rank, divided by the step's unit count (with class weights: their summed weight)
over the same. So a token, an example or a window weighs the same whether the step runs on 1
rank with accumulation 4, on 2 x 2 or on 4 x 1, packed or not. A mean of per-micro-batch
means would not: a micro batch with few labelled tokens would weigh as much as a full one.

The count is known before the first backward: the step's micro batches are read ahead (they
are tokenized already), each rank counts its units from the labels on the device, and one
all-reduce per optimizer step sums the counts. Each micro batch then backpropagates

    sum of its unit losses x world x accumulation / step count

where the two factors undo divisions the libraries make for a loss they take to be a mean of
equal-weight micro batches: DDP, FSDP and ZeRO average gradients over ranks (divide by
world), and accelerate's `backward` divides the loss by `gradient_accumulation_steps` (for
DeepSpeed it leaves that to DeepSpeed's `engine.backward`, which divides by its own
accumulation steps). Summed over micro batches and averaged over ranks, the gradient is the
step's mean loss's.

Under a token budget (scale.tokens_per_step) a step has as many micro batches as its tokens
need, the same number on every rank (engine/budget.py), some of them zero-weight (`real`
False: counted nowhere, their loss times 0, run so that every rank does the same forwards).
The accelerator then accumulates over 1: gradients are kept local (`no_sync`) until the
step's last backward, which all-reduces them, and the optimizer steps once.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import torch

from launcher.engine import packing
from launcher.tasks import Task


def step_count(task: Task, labels: Sequence[torch.Tensor], weights: Optional[torch.Tensor],
               world: int) -> torch.Tensor:
    """The step's units over all its micro batches and ranks (float64, on the labels' device):
    one all-reduce per step, enqueued without a host sync."""
    count = torch.stack([task.units(lab, weights) for lab in labels]).sum()
    if world > 1:
        torch.distributed.all_reduce(count)
    # A step without one labelled unit (every word of every row cut off) has a zero loss sum:
    # train on zero rather than on 0 / 0.
    return torch.where(count > 0, count, torch.ones_like(count))


def backward_divisor(accelerator: Any, model: Any) -> int:
    """What the backward path divides each micro batch's loss by: accelerate's accumulation
    steps, or for DeepSpeed the engine's own (it divides in `engine.backward`)."""
    if accelerator.distributed_type.name == "DEEPSPEED":
        return int(model.gradient_accumulation_steps())
    return int(accelerator.gradient_accumulation_steps)


def train_step(accelerator: Any, model: Any, optimizer: Any, task: Task,
               micro_batches: Sequence[dict[str, torch.Tensor]],
               weights: Optional[torch.Tensor], *, pooler: Optional[packing.IndexedPooler],
               max_grad_norm: float, real: Optional[Sequence[bool]] = None) -> torch.Tensor:
    """Forward and backward each of one optimizer step's micro batches (this rank's model
    inputs, on the device, labels included) and step the optimizer. Returns this rank's
    share of the step's loss (a float64 device scalar): summed over ranks, the step's loss.
    `real[i]` False: micro batch i is a zero-weight forward (token budgets)."""
    real = list(real) if real is not None else [True] * len(micro_batches)
    counted = [b["labels"] for b, r in zip(micro_batches, real) if r]
    count = (step_count(task, counted, weights, accelerator.num_processes) if counted else
             step_count(task, [micro_batches[0]["labels"][:0]], weights,
                        accelerator.num_processes))
    divisor = backward_divisor(accelerator, model)
    if len(micro_batches) != divisor:
        return _variable_step(accelerator, model, optimizer, task, micro_batches, real, weights,
                              count, pooler=pooler, max_grad_norm=max_grad_norm)
    # Undo the rank average and the accumulation division (module docstring).
    scale = accelerator.num_processes * divisor / count
    share = torch.zeros((), dtype=torch.float64, device=count.device)
    for inputs, weight in zip(micro_batches, real):
        with accelerator.accumulate(model), packing.pooled_at(pooler, inputs.get("cls_index")):
            outputs = model(**packing.model_inputs(inputs))
            total = task.loss_sum(outputs, inputs["labels"], weights)
            if not weight:
                total = total * 0
            accelerator.backward(total * scale.to(total.dtype))
            if accelerator.sync_gradients and max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        share += total.detach().double() / count
    return share


def _variable_step(accelerator: Any, model: Any, optimizer: Any, task: Task,
                   micro_batches: Sequence[dict[str, torch.Tensor]], real: list[bool],
                   weights: Optional[torch.Tensor], count: torch.Tensor, *,
                   pooler: Optional[packing.IndexedPooler], max_grad_norm: float) -> torch.Tensor:
    """A step of any number of micro batches (token budgets: the accelerator accumulates
    over 1, so nothing divides by the number of micro batches)."""
    if accelerator.distributed_type.name == "DEEPSPEED" or accelerator.gradient_accumulation_steps != 1:
        raise RuntimeError(f"a step of {len(micro_batches)} micro batches needs an accelerator "
                           "that accumulates over 1 (the plan's token budget), not "
                           f"{accelerator.distributed_type.name} with "
                           f"{accelerator.gradient_accumulation_steps}")
    scale = accelerator.num_processes / count
    share = torch.zeros((), dtype=torch.float64, device=count.device)
    last = len(micro_batches) - 1
    for i, (inputs, weight) in enumerate(zip(micro_batches, real)):
        # Local gradients until the last backward, which all-reduces their sum.
        sync = contextlib.nullcontext() if i == last else accelerator.no_sync(model)
        with sync, packing.pooled_at(pooler, inputs.get("cls_index")):
            outputs = model(**packing.model_inputs(inputs))
            total = task.loss_sum(outputs, inputs["labels"], weights)
            if not weight:
                total = total * 0
            accelerator.backward(total * scale.to(total.dtype))
        share += total.detach().double() / count
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return share
