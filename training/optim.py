"""AdamW with weight decay on matrices only (embeddings and linear weights), none on norms and biases."""

from __future__ import annotations

import torch
from torch import nn

from training.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused AdamW (one kernel for all parameters, on CUDA and CPU): it also takes `found_inf`, which lets the
    # trainer skip a non-finite step on the device without reading the loss on the host first.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
