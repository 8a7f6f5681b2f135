"""AdamW with the usual BERT parameter groups, and the learning-rate schedule."""

from __future__ import annotations

from typing import Any

import torch
from transformers import get_scheduler

from launcher.recipe.schema import OptimConfig

_SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup",
              "constant_with_warmup": "constant_with_warmup"}


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Biases and LayerNorm weights are not decayed (as in the BERT paper's code).
        (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, warmup_steps: int,
                    total_steps: int) -> Any:
    return get_scheduler(_SCHEDULES[cfg.scheduler], optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=total_steps)
