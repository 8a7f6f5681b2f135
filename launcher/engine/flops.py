"""Training FLOPs of a BERT-family encoder, counted the way encoder fine-tuning needs.

Per token, forward plus backward (the backward pass costs twice the forward):
    6 x N            N = non-embedding parameters the token passes through (every encoder
                     layer's matmuls; a per-token head, for token classification and QA)
  + 12 x L x H x S   attention scores and the weighted sum (Q K^T and A V: 2 x 2 x S x H
                     multiply-adds per layer in forward), S = the row's length
and per row 6 x N_head for a head that sees one vector per row (BERT's pooler and the
sequence classifier). Embedding lookups cost no matmul FLOPs. Summed over a batch:
    6 N tokens + 12 L H sum(S_r^2) + 6 N_head rows.

Counted on real tokens this is the model's work (MFU); counted on the padded rows the GPU
actually computed, it is the hardware's (HFU). tests/test_bench.py checks the formula against
torch.utils.flop_counter on a BERT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMULA = ("6 x N x tokens + 12 x L x H x sum(S^2) + 6 x N_head x rows (forward + backward; "
           "N = non-embedding parameters per token, L layers, H hidden size, S each row's "
           "length, N_head = pooler + classifier, applied once per row)")

# Dense peak TFLOP/s from the datasheets (no sparsity), by the names torch gives the devices.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5},   # fp32 as TF32 tensor cores
    "H100 80GB HBM3": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0},
    "V100": {"fp16": 125.0, "fp32": 15.7},
}


@dataclass(frozen=True)
class FlopShape:
    layers: int
    hidden: int
    per_token_params: int   # N
    per_row_params: int     # N_head

    def train_flops(self, tokens: int, sum_sq_lengths: int, rows: int) -> float:
        return (6.0 * self.per_token_params * tokens
                + 12.0 * self.layers * self.hidden * sum_sq_lengths
                + 6.0 * self.per_row_params * rows)


def flop_shape(model: Any) -> FlopShape:
    """Count N and N_head on a built model (unwrapped, whole: before any sharding)."""
    base = model.base_model
    config = model.config
    embedding = {id(p) for p in base.embeddings.parameters()}
    pooler = getattr(base, "pooler", None)
    per_row = {id(p) for p in pooler.parameters()} if pooler is not None else set()
    pooled_head = type(model).__name__.endswith("ForSequenceClassification")
    base_ids = {id(p) for p in base.parameters()}
    per_token = per_row_n = 0
    for p in model.parameters():
        if id(p) in embedding:
            continue
        if id(p) in per_row or (pooled_head and id(p) not in base_ids):
            per_row_n += p.numel()
        else:
            per_token += p.numel()
    return FlopShape(layers=config.num_hidden_layers, hidden=config.hidden_size,
                     per_token_params=per_token, per_row_params=per_row_n)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The datasheet's dense peak for a device torch names, e.g. 'NVIDIA H100 80GB HBM3'."""
    name = device_name.removeprefix("NVIDIA ").strip()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name.startswith(key) or key in name:
            return PEAK_TFLOPS[key].get(precision)
    return None
