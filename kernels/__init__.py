"""NSA kernel ops (interface: /work/shared/NSA.md, "Functional kernel interface").

    compressed_attention(q, k_cmp, v_cmp, *, block_size, stride, scale=None) -> (o, lse)
    select_blocks(q, k_cmp, lse, *, block_size, stride, select_size, num_select,
                  num_init=1, num_local=2, scale=None) -> idx
    selected_attention(q, k, v, idx, *, select_size, scale=None) -> o
    window_attention(q, k, v, *, window, scale=None) -> o

Each op checks its sizes (one-line ValueError), then dispatches:
- CUDA tensors, or CPU tensors with TRITON_INTERPRET=1: the Triton kernel registered for the op in
  `TRITON_OPS` (kernels/ops.py over kernels/triton_*.py; registered only where it can run, see
  `_register_triton_ops`); an op not registered takes the PyTorch path below.
- otherwise: kernels/chunked.py, vectorised PyTorch over query tiles (never a [T, T] matrix).
kernels/reference.py is the dense executable specification both are tested against.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from kernels import chunked, reference
from kernels.reference import (
    check_attention_inputs,
    check_block_indices,
    check_lse,
    check_nsa_sizes,
    num_compressed_tokens,
)

__all__ = [
    "compressed_attention",
    "select_blocks",
    "selected_attention",
    "window_attention",
    "check_nsa_sizes",
    "num_compressed_tokens",
    "reference",
    "TRITON_OPS",
]

# The single place where the Triton kernels plug in: op name -> function with the op's exact
# signature. `_register_triton_ops` below fills it from kernels/ops.py (the torch.library ops over
# kernels/triton_*.py); an op missing here falls back to the PyTorch path on every device.
TRITON_OPS: dict[str, Callable] = {}


def _register_triton_ops() -> None:
    """Fill TRITON_OPS when the Triton kernels can run in this process: on a machine with CUDA, or on CPU
    with TRITON_INTERPRET=1 set before triton is first imported (Triton fixes the mode at import).
    Elsewhere (or without triton installed) triton is not imported at all."""
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return
    try:
        from kernels import ops
    except ImportError:  # no triton on this platform
        return
    TRITON_OPS.update(ops.TRITON_OPS)


def _impl(name: str, x: torch.Tensor) -> Callable:
    """The function that runs op `name` for tensors like `x`."""
    wants_triton = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    if wants_triton and name in TRITON_OPS:
        return TRITON_OPS[name]
    return getattr(chunked, name)


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, block_size: int,
                         stride: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B,T,Hq,Dk], k_cmp [B,Tc,Hkv,Dk], v_cmp [B,Tc,Hkv,Dv] -> o [B,T,Hq,Dv], lse [B,T,Hq] float32.

    Tc = num_compressed_tokens(T, block_size, stride); compressed token i is visible to query t iff
    i*stride + block_size - 1 <= t; o = 0 and lse = -inf where none is.
    """
    check_nsa_sizes(block_size=block_size, stride=stride)
    check_attention_inputs("compressed_attention", q, k_cmp, v_cmp, names=("k_cmp", "v_cmp"),
                           num_keys=num_compressed_tokens(q.shape[1], block_size, stride))
    return _impl("compressed_attention", q)(q, k_cmp, v_cmp, block_size=block_size, stride=stride, scale=scale)


def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, *, block_size: int, stride: int,
                  select_size: int, num_select: int, num_init: int = 1, num_local: int = 2,
                  scale: float | None = None) -> torch.Tensor:
    """q [B,T,Hq,Dk], k_cmp [B,Tc,Hkv,Dk], lse [B,T,Hq] -> int32 idx [B,T,Hkv,num_select]. No gradient.

    Forced: blocks 0 .. num_init-1 and the num_local most recent blocks t//l', t//l'-1, ... (>= 0);
    the rest: highest group-summed importance among visible blocks (j*l' <= t), ties to the lower id;
    -1 in unused slots. See kernels.reference.select_blocks for the exact definition.
    """
    check_nsa_sizes(block_size=block_size, stride=stride, select_size=select_size, num_select=num_select,
                    num_init=num_init, num_local=num_local)
    check_attention_inputs("select_blocks", q, k_cmp, k_cmp, names=("k_cmp", "k_cmp"),
                           num_keys=num_compressed_tokens(q.shape[1], block_size, stride))
    check_lse("select_blocks", lse, q)
    return _impl("select_blocks", q)(q, k_cmp, lse, block_size=block_size, stride=stride,
                                     select_size=select_size, num_select=num_select, num_init=num_init,
                                     num_local=num_local, scale=scale)


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *,
                       select_size: int, scale: float | None = None) -> torch.Tensor:
    """q [B,T,Hq,Dk], k [B,T,Hkv,Dk], v [B,T,Hkv,Dv], idx [B,T,Hkv,n] -> o [B,T,Hq,Dv].

    Query t, head h attends to keys s <= t of the blocks idx[b, t, h // G, :] (-1 ignored).
    """
    check_nsa_sizes(select_size=select_size)
    check_attention_inputs("selected_attention", q, k, v, num_keys=q.shape[1])
    check_block_indices("selected_attention", idx, q, k)
    return _impl("selected_attention", q)(q, k, v, idx, select_size=select_size, scale=scale)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int,
                     scale: float | None = None) -> torch.Tensor:
    """q [B,T,Hq,Dk], k [B,T,Hkv,Dk], v [B,T,Hkv,Dv] -> o [B,T,Hq,Dv]; query t sees keys t-window < s <= t."""
    check_nsa_sizes(window=window)
    check_attention_inputs("window_attention", q, k, v, num_keys=q.shape[1])
    return _impl("window_attention", q)(q, k, v, window=window, scale=scale)


_register_triton_ops()
