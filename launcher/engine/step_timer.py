"""What `launcher bench` measures inside the engine's own loop: per-step time, time waiting for
data, rows and tokens, FLOPs, peak memory; and the result it writes (RESULT_FIELDS).

Step times come from CUDA events recorded at each step's end and read after the last step, so
timing adds no host sync to the loop it measures (on CPU the loop is synchronous and the host
clock is the step's clock). The timed region starts after `warmup` steps, at a device sync.

`launcher bench` writes its spec into the plan (plan.bench: the configuration's name,
warm-up steps and where the result goes); engine/main.py hands the trainer a StepTimer as its
step hooks. bench/hf_trainer.py writes its baseline's result in the same fields.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from launcher.checkpoint.store import write_atomic
from launcher.engine import packing
from launcher.engine.flops import flop_shape
from launcher.engine.hooks import StepHooks
from launcher.plan.build import Plan

# One configuration's measurement, as its rank 0 writes it (JSON). Counts are over the timed
# steps only and summed over ranks; times are rank 0's.
RESULT_FIELDS = {
    "name": "label of the configuration, e.g. 'launcher ddp bf16 b32'",
    "runner": "'launcher' or 'hf-trainer'",
    "strategy": "ddp | zero1 | zero2 | zero3 | zero3_offload | fsdp",
    "precision": "bf16 | fp16 | fp32",
    "world_size": "processes", "micro_batch": "rows per process per micro step",
    "grad_accum": "micro steps per step", "global_batch": "rows per optimizer step",
    "max_length": "truncation length", "padding": "how rows were padded, in words",
    "warmup_steps": "steps run before timing", "steps": "timed steps",
    "step_times_s": "list: each timed step's wall time (s)",
    "data_wait_s": "list: per timed step, the time the loop waited for its batches (s)",
    "wall_s": "wall time of the timed steps together (s)",
    "samples": "rows trained in the timed steps", "real_tokens": "non-pad tokens in them",
    "padded_tokens": "tokens computed, padding included",
    "model_flops": "flops.FlopShape.train_flops on real lengths, summed",
    "hardware_flops": "the same on padded lengths",
    "peak_memory_bytes": "max over ranks of torch.cuda.max_memory_allocated (null on CPU)",
    "peak_reserved_bytes": "max over ranks of torch.cuda.max_memory_reserved (null on CPU)",
    "device": "torch's device name, or the CPU's", "error": "null, or why it did not run",
}


def write_result(path: Path, result: dict) -> None:
    """One configuration's result, whole or not at all (`bench` reads it after the job)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=1) + "\n")


class StepTimer(StepHooks):
    def __init__(self, plan: Plan):
        assert plan.bench is not None
        self.plan, self.spec = plan, plan.bench
        self.warmup = plan.bench["warmup_steps"]
        self.device: Optional[torch.device] = None
        self.cuda = False
        self.step_ends: list[Any] = []  # events (CUDA) or host times, from the last warm-up step
        self.data_wait: list[float] = []
        self._wait = 0.0
        self._timed = False
        self.start = self.end = 0.0
        # examples, real tokens, padded tokens, sum of real lengths squared, of padded rows'
        # lengths squared
        self.counts = [0, 0, 0, 0, 0]

    def setup(self, model: Any, device: torch.device) -> None:
        self.shape = flop_shape(model)  # on the whole model: sharding hides parameters
        self.device, self.cuda = device, device.type == "cuda"

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

    def finish(self, group: Any) -> None:
        p = self.plan
        scale = p.recipe.scale
        result = self.result(
            group, name=self.spec["name"], runner="launcher", strategy=scale.strategy,
            precision=scale.precision, world_size=p.world_size, micro_batch=p.micro_batch,
            grad_accum=p.grad_accum, global_batch=p.global_batch,
            max_length=p.recipe.data.max_length,
            padding=f"dynamic: longest row of each micro batch, multiple of "
                    f"{p.recipe.data.pad_to_multiple_of or 1}")
        if result is not None:
            write_result(Path(self.spec["result"]), result)

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
