"""`launcher bench`: throughput of a recipe's model and data shape, ours beside HF Trainer.

Every configuration (runner x strategy x batch) runs as its own torchrun job on one node and
writes one result (see RESULT_FIELDS); `report.py` turns the results into REPORT.md,
report.json, plots and a table. FLOPs are counted by `flops.py`.
"""

import json
from pathlib import Path

from launcher.checkpoint.store import write_atomic

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
