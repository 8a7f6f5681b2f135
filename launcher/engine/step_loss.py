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
"""

from __future__ import annotations

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
               max_grad_norm: float) -> torch.Tensor:
    """Forward and backward each of one optimizer step's micro batches (this rank's model
    inputs, on the device, labels included) and step the optimizer. Returns this rank's
    share of the step's loss (a float64 device scalar): summed over ranks, the step's loss."""
    count = step_count(task, [b["labels"] for b in micro_batches], weights,
                       accelerator.num_processes)
    # Undo the rank average and the accumulation division (module docstring).
    scale = accelerator.num_processes * backward_divisor(accelerator, model) / count
    share = torch.zeros((), dtype=torch.float64, device=count.device)
    for inputs in micro_batches:
        with accelerator.accumulate(model), packing.pooled_at(pooler, inputs.get("cls_index")):
            outputs = model(**packing.model_inputs(inputs))
            total = task.loss_sum(outputs, inputs["labels"], weights)
            accelerator.backward(total * scale.to(total.dtype))
            if accelerator.sync_gradients and max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        share += total.detach().double() / count
    return share
