"""Learning-rate schedules as pure functions of the step (so resume needs no scheduler state)."""

from __future__ import annotations

import math

from training.config import OptimConfig


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a `total_steps` run."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "wsd":
        decay_steps = int(cfg.decay_frac * total_steps)
        decay_start = total_steps - decay_steps
        if step < decay_start or decay_steps == 0:
            return peak
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return peak + (floor - peak) * progress
    raise ValueError(f"optim.schedule={cfg.schedule!r} is not one of ['cosine', 'wsd', 'constant']")
