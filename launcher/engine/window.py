"""Training numbers between two log steps, kept off the host until the log step.

Only the loss lives on the device; token counts come from the batch's CPU tensors before
they are moved, so a step never waits for the GPU just to be counted.
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
        self.micro_batches = self.tokens = self.padded_tokens = self.steps = 0
        self.start = time.perf_counter()

    def add_micro_batch(self, loss: torch.Tensor, attention_mask_cpu: torch.Tensor) -> None:
        self.loss += loss.detach().double()
        self.micro_batches += 1
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
        local = torch.stack([self.loss, torch.tensor(float(self.micro_batches),
                                                     dtype=torch.float64, device=self.device)])
        loss, micro = accelerator.reduce(local, reduction="sum").tolist()
        return {"loss_sum": loss, "micro_batches": int(micro)}

    def restore(self, partial: dict[str, float]) -> None:
        """On one rank only (the sums are over all ranks)."""
        self.loss += partial["loss_sum"]
        self.micro_batches += partial["micro_batches"]

    def totals(self, accelerator) -> dict[str, float]:
        """Sums over all ranks, and rates over this window's wall time (a collective)."""
        seconds = time.perf_counter() - self.start
        counts = torch.tensor([self.micro_batches, self.tokens, self.padded_tokens],
                              dtype=torch.float64, device=self.device)
        local = torch.cat([self.loss.view(1), counts])
        loss, micro, tokens, padded = accelerator.reduce(local, reduction="sum").tolist()
        return {"loss": loss / micro, "seconds": seconds, "steps": self.steps,
                "tokens_per_s": tokens / seconds, "padded_tokens_per_s": padded / seconds}
