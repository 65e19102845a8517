"""Rotary position embedding (RoPE), "rotate half" convention, computed in float32."""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """Holds cos/sin tables for positions [0, max_len); grows them on demand (e.g. eval beyond training length).

    Buffers are non-persistent: checkpoints hold no RoPE state, so `rope_base` and lengths can change freely.
    """

    def __init__(self, head_dim: int, base: float, max_len: int) -> None:
        super().__init__()
        self.head_dim, self.base = head_dim, base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(max_len)

    def _build(self, max_len: int) -> None:
        pos = torch.arange(max_len, dtype=torch.float32, device=self.inv_freq.device)
        angles = torch.outer(pos, self.inv_freq)  # [max_len, head_dim / 2]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def reset_parameters(self) -> None:
        """Recompute the tables (used after materialising a meta-device model)."""
        self.inv_freq.copy_(self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self._build(self.cos.shape[0])

    def ensure_length(self, max_len: int) -> None:
        if max_len > self.cos.shape[0]:
            self._build(max_len)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate x [B, T, H, D] as if its tokens sat at positions start .. start + T - 1."""
        T = x.shape[1]
        return apply_rotary(x, self.cos[start : start + T], self.sin[start : start + T])

    def at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, N, H, D] with explicit positions [N] (e.g. NSA's compressed keys)."""
        return apply_rotary(x, self.cos[positions], self.sin[positions])


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D], cos/sin [T, D/2] -> x rotated pairwise (x1, x2) = (x[..., :D/2], x[..., D/2:])."""
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)
