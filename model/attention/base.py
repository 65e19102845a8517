"""The contract every attention module of the GPT follows (full attention, NSA, ...).

The GPT only ever calls these methods, so a new attention type plugs in through the registry
(`model/attention/__init__.py`) without touching `model/gpt.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

from model.config import AttentionConfig, ModelConfig
from model.rope import Rotary, apply_rotary


class DecodePosition:
    """A decoding step's position (`pos`, int64 [1] on the device) and the tensors layers derive from it (RoPE
    rows, cache slots, masks), each computed once per step: in a step captured as a CUDA graph every layer would
    otherwise launch the same small kernels again."""

    def __init__(self, pos: torch.Tensor) -> None:
        self.pos = pos
        self._derived: dict[Hashable, Any] = {}

    def derived(self, key: Hashable, make: Callable[[torch.Tensor], Any]) -> Any:
        """make(pos), computed the first time `key` is asked for in this step."""
        if key not in self._derived:
            self._derived[key] = make(self.pos)
        return self._derived[key]

    def rotate(self, rotary: Rotary, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, H, D] rotated at the step's position."""
        cos, sin = self.derived(("rope", id(rotary)), lambda p: (rotary.cos[p], rotary.sin[p]))
        return apply_rotary(x, cos, sin)


class Attention(nn.Module):
    """Maps x [B, T, C] -> [B, T, C]; causal; may read and extend a per-layer decoding cache."""

    def __init__(self, model_cfg: ModelConfig, attn_cfg: AttentionConfig, layer_idx: int) -> None:
        super().__init__()
        self.model_cfg, self.attn_cfg, self.layer_idx = model_cfg, attn_cfg, layer_idx

    @classmethod
    def check_config(cls, model_cfg: ModelConfig, attn_cfg: AttentionConfig) -> None:
        """Raise ValueError with a one-line fix when the configs are inconsistent (called at start-up)."""

    def forward(self, x: torch.Tensor, rotary: Rotary, cache: Any | None = None) -> torch.Tensor:
        """x [B, T, C]. Without a cache the T tokens sit at positions 0..T-1; with one they follow the
        cache's tokens, and the cache is extended by them (prefill when empty, decoding when T == 1)."""
        raise NotImplementedError

    def decode_step(self, x: torch.Tensor, rotary: Rotary, cache: Any, step: DecodePosition) -> torch.Tensor:
        """One decoding step, x [B, 1, C] at the position held in step.pos (int64 [1] on x's device) -> [B, 1, C],
        with shapes and kernel arguments that stay fixed from step to step (capturable in a CUDA graph). The
        cache holds positions 0 .. pos - 1 and is written at pos; its `length` is not advanced."""
        raise NotImplementedError

    def new_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> Any:
        """An empty decoding cache for up to `max_len` tokens (must expose an int `length`)."""
        raise NotImplementedError

    def attended_keys(self, seq_len: int) -> dict[str, float]:
        """Mean number of keys a query attends to over positions 0..seq_len-1, per branch plus 'total'.
        Used for FLOPs (MFU) and for reporting how sparse the attention is."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of this module at training length `seq_len` (projections + attention)."""
        raise NotImplementedError

    def init_weights(self, std: float, out_std: float) -> None:
        """Initialise: input projections N(0, std), output projection N(0, out_std) (depth-scaled)."""
        raise NotImplementedError
