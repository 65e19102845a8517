"""Shared pieces of the bf16 GPU kernel tests: bf16 inputs and relative error (the freshly seeded CUDA generator
is the `cuda_gen` fixture in tests/conftest.py)."""

from __future__ import annotations

import torch

BF16, F32 = torch.bfloat16, torch.float32
DEV = "cuda"


def rand(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """Standard normal * scale, drawn in float32 on the GPU, returned in bf16."""
    return (torch.randn(*shape, generator=gen, device=DEV, dtype=F32) * scale).to(BF16)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32."""
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
