"""Training numbers between two log steps, kept off the host until the log step.

Only the loss lives on the device; token counts come from the batch's CPU tensors before
they are moved, so a step never waits for the GPU just to be counted. The loss is each
step's own (launcher/engine/step_loss.py: the mean over its labelled units on all ranks),
averaged over the window's steps, so it reads the same at any world size or accumulation.
"""

from __future__ import annotations

import contextlib
import time

import torch


class LogWindow:
    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        # Steps in `loss`: loss_steps trained here (on every rank), carried_steps from
        # before a resume (on the rank that restored them); `steps` is what was timed here.
        self.loss_steps = self.tokens = self.padded_tokens = self.steps = self.examples = 0
        self.carried_steps = 0.0
        self.start = time.perf_counter()

    def add_step_loss(self, share: torch.Tensor) -> None:
        """This rank's share of a step's loss (summed over ranks: the step's loss)."""
        self.loss += share.detach().double()
        self.loss_steps += 1

    def add_micro_batch(self, attention_mask_cpu: torch.Tensor, examples: int = 0) -> None:
        self.examples += examples
        self.tokens += int(attention_mask_cpu.sum())
        self.padded_tokens += attention_mask_cpu.numel()

    @contextlib.contextmanager
    def paused(self):
        """Leave eval and checkpoint time out of the training rates."""
        began = time.perf_counter()
        yield
        self.start += time.perf_counter() - began

    def partial(self, accelerator) -> dict[str, float]:
        """The loss summed over all ranks so far in this window (a collective): a checkpoint
        keeps it, so the first log line after a resume averages over the whole window."""
        local = torch.stack([self.loss, torch.tensor(self.carried_steps, dtype=torch.float64,
                                                     device=self.device)])
        loss, carried = accelerator.reduce(local, reduction="sum").tolist()
        return {"loss_sum": loss, "steps": self.loss_steps + carried}

    def restore(self, partial: dict[str, float], micro_batches_per_step: int) -> None:
        """On one rank only (the sums are over all ranks). A checkpoint written before losses
        were per step holds a sum of micro-batch means and their count (all ranks): their
        mean stands for count / micro_batches_per_step steps."""
        steps = partial.get("steps")
        if steps is None:
            steps = partial["micro_batches"] / micro_batches_per_step
            self.loss += partial["loss_sum"] / micro_batches_per_step
        else:
            self.loss += partial["loss_sum"]
        self.carried_steps += steps

    def totals(self, accelerator) -> dict[str, float]:
        """Sums over all ranks, and rates over this window's wall time (a collective)."""
        seconds = time.perf_counter() - self.start
        counts = torch.tensor([self.carried_steps, self.tokens, self.padded_tokens,
                               self.examples], dtype=torch.float64, device=self.device)
        local = torch.cat([self.loss.view(1), counts])
        loss, carried, tokens, padded, examples = accelerator.reduce(local,
                                                                     reduction="sum").tolist()
        return {"loss": loss / (self.loss_steps + carried), "seconds": seconds, "steps": self.steps,
                "examples": examples,
                "tokens_per_s": tokens / seconds, "padded_tokens_per_s": padded / seconds}
