"""What `launcher bench` measures inside the engine's own loop: per-step time, time waiting for
data, rows and tokens, FLOPs, peak memory.

Step times come from CUDA events recorded at each step's end and read after the last step, so
timing adds no host sync to the loop it measures (on CPU the loop is synchronous and the host
clock is the step's clock). The timed region starts after `warmup` steps, at a device sync.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from launcher.bench.flops import FlopShape
from launcher.engine import packing


class StepTimer:
    def __init__(self, *, warmup: int, device: torch.device, shape: FlopShape):
        self.warmup, self.device, self.shape = warmup, device, shape
        self.cuda = device.type == "cuda"
        self.step_ends: list[Any] = []  # events (CUDA) or host times, from the last warm-up step
        self.data_wait: list[float] = []
        self._wait = 0.0
        self._timed = False
        self.start = self.end = 0.0
        # examples, real tokens, padded tokens, sum of real lengths squared, of padded rows'
        # lengths squared
        self.counts = [0, 0, 0, 0, 0]

    def data_begin(self) -> None:
        self._fetch = time.perf_counter()

    def data_end(self, inputs: dict[str, torch.Tensor]) -> None:
        self._wait += time.perf_counter() - self._fetch
        if self._timed:
            mask = packing.token_mask(inputs)
            rows, padded = mask.shape
            # FLOPs: per example on real lengths; per computed row on padded ones.
            for i, value in enumerate((len(inputs["labels"]), int(mask.sum()), rows * padded,
                                       packing.lengths_squared(inputs), rows * padded * padded)):
                self.counts[i] += value

    def step_end(self, step: int) -> None:
        if step < self.warmup:
            self._wait = 0.0
            return
        if step == self.warmup:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.start, self._timed = time.perf_counter(), True
        else:
            self.data_wait.append(self._wait)
        self._wait = 0.0
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.step_ends.append(event)
        else:
            self.step_ends.append(time.perf_counter())

    def result(self, group: Any, **identity: Any) -> Optional[dict]:
        """The measurement, summed over ranks through `group` (a gloo group: the tensors stay
        on the host; None for one process); a dict on rank 0, None elsewhere (collective)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.end = time.perf_counter()
        if self.cuda:
            times = [a.elapsed_time(b) / 1e3 for a, b in zip(self.step_ends, self.step_ends[1:])]
            peak = [torch.cuda.max_memory_allocated(self.device),
                    torch.cuda.max_memory_reserved(self.device)]
        else:
            times = [b - a for a, b in zip(self.step_ends, self.step_ends[1:])]
            peak = [0, 0]
        counts = torch.tensor(self.counts, dtype=torch.float64)
        peaks = torch.tensor(peak, dtype=torch.float64)
        if group is not None:
            dist.all_reduce(counts, group=group)
            dist.all_reduce(peaks, op=dist.ReduceOp.MAX, group=group)
            if dist.get_rank() != 0:
                return None
        rows, real, padded, real_sq, padded_sq = (int(x) for x in counts.tolist())
        return {
            **identity, "steps": len(times), "warmup_steps": self.warmup,
            "step_times_s": times, "data_wait_s": self.data_wait, "wall_s": self.end - self.start,
            "samples": rows, "real_tokens": real, "padded_tokens": padded,
            "model_flops": self.shape.train_flops(real, real_sq, rows),
            "hardware_flops": self.shape.train_flops(padded, padded_sq, rows),
            "peak_memory_bytes": int(peaks[0]) if self.cuda else None,
            "peak_reserved_bytes": int(peaks[1]) if self.cuda else None,
            "device": torch.cuda.get_device_name(self.device) if self.cuda else cpu_name(),
            "error": None,
        }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"
