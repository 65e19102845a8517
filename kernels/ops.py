"""torch.library registration of the Triton NSA kernels, and the functions kernels/__init__.py dispatches to.

Each kernel pair becomes a custom op (`torch.ops.nsa.*`) with a fake (meta) implementation and an
autograd formula that calls the backward op, so `torch.compile(fullgraph=True)` traces straight
through the ops (they stay opaque calls in the graph) and autograd runs the backward kernels:

    nsa::band_fwd / nsa::band_bwd          compressed and window attention (kernels/triton_banded.py)
    nsa::select_blocks                     block scoring + top-n, no gradient (kernels/triton_select.py)
    nsa::selected_fwd / nsa::selected_bwd  selected-block attention (kernels/triton_selected.py)

The forward ops also return the row log-sum-exp in the accumulation dtype (float32; float64 for
float64 inputs), which the backward needs; the public functions below drop it or cast it to float32.

`TRITON_OPS` maps op names to functions with the public signatures of kernels/__init__.py. They run
the kernels on CUDA tensors, and on CPU tensors when the kernels were built under TRITON_INTERPRET=1
(set before triton is imported); any other tensor takes the chunked PyTorch path of kernels/chunked.py
(e.g. CPU tensors in a process where triton was imported without the interpreter).

Annotations here are evaluated (no `from __future__ import annotations`): torch.library reads the op
schemas from them, and older torch versions do not resolve string annotations.
"""

import os
from collections.abc import Callable
from typing import Optional

import torch

from kernels import chunked, cudnn_compressed
from kernels.reference import resolve_scale
from kernels.triton_banded import band_backward, band_forward
from kernels.triton_common import acc_dtype, runs_triton
from kernels.triton_select import select_blocks as _select_blocks_launch
from kernels.triton_selected import selected_backward, selected_forward

Tensor = torch.Tensor

# Which kernel runs compressed attention on CUDA tensors: "triton" (the banded kernel below), "cudnn"
# (kernels/cudnn_compressed.py: cuDNN's fused attention on a strided view of q, for float16/bfloat16 only; other
# inputs stay on Triton) or "auto" (cuDNN where it measured faster: long sequences, cudnn_compressed.pays_off).
# `scripts/bench_attention.py --sections compressed` times both. The default is auto (NSA_COMPRESSED_BACKEND
# overrides it): on an H100, compiled small_gqa16 training at 64k runs 8.6% faster on it (184.6k -> 200.4k tokens/s);
# on an H200 the main-shape NSA forward+backward at 64k 7% (docs/benchmarks.md, fifteenth and sixteenth sessions).
# Its cost is memory: cuDNN keeps its own copy of the output and returns dQ in a buffer of its own, so one NSA
# forward+backward at 64k (Hq 64, D 128) peaks at 8.7 GB against 5.7 on Triton; =triton is the lean choice.
# The choices live in kernels/cudnn_compressed.py (BACKENDS), which scripts can import without triton.
COMPRESSED_BACKEND = os.environ.get("NSA_COMPRESSED_BACKEND", "auto")
if COMPRESSED_BACKEND not in cudnn_compressed.BACKENDS:
    raise ValueError(f"NSA_COMPRESSED_BACKEND={COMPRESSED_BACKEND!r}: "
                     f"use one of {', '.join(cudnn_compressed.BACKENDS)}")

# ----------------------------------------------------------------------------------------------
# compressed / window attention: one banded op (key j visible to t iff j*ks + koff <= t < j*ks + koff + win;
# win = -1: no upper bound)


@torch.library.custom_op("nsa::band_fwd", mutates_args=())
def band_fwd(q: Tensor, k: Tensor, v: Tensor, ks: int, koff: int, win: int, scale: float) -> tuple[Tensor, Tensor]:
    return band_forward(q, k, v, ks, koff, win, scale)


@band_fwd.register_fake
def _(q, k, v, ks, koff, win, scale):
    B, T, Hq, _ = q.shape
    return q.new_empty(B, T, Hq, v.shape[-1]), q.new_empty(B, T, Hq, dtype=acc_dtype(q.dtype))


@torch.library.custom_op("nsa::band_bwd", mutates_args=())
def band_bwd(do: Tensor, dlse: Optional[Tensor], q: Tensor,  # noqa: UP045 (schema inference)
             k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
             ks: int, koff: int, win: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return band_backward(do, dlse, q, k, v, o, lse, ks, koff, win, scale)


@band_bwd.register_fake
def _(do, dlse, q, k, v, o, lse, ks, koff, win, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _band_setup(ctx, inputs, output):
    q, k, v, ks, koff, win, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.args = (ks, koff, win, scale)


def _band_grad(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = band_bwd(do, dlse, q, k, v, o, lse, *ctx.args)
    return dq, dk, dv, None, None, None, None


band_fwd.register_autograd(_band_grad, setup_context=_band_setup)

# ----------------------------------------------------------------------------------------------
# selected attention


@torch.library.custom_op("nsa::selected_fwd", mutates_args=())
def selected_fwd(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, select_size: int,
                 scale: float) -> tuple[Tensor, Tensor]:
    return selected_forward(q, k, v, idx, select_size, scale)


@selected_fwd.register_fake
def _(q, k, v, idx, select_size, scale):
    B, T, Hq, _ = q.shape
    return q.new_empty(B, T, Hq, v.shape[-1]), q.new_empty(B, T, Hq, dtype=acc_dtype(q.dtype))


@torch.library.custom_op("nsa::selected_bwd", mutates_args=())
def selected_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, idx: Tensor, o: Tensor, lse: Tensor,
                 select_size: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return selected_backward(do, q, k, v, idx, o, lse, select_size, scale)


@selected_bwd.register_fake
def _(do, q, k, v, idx, o, lse, select_size, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _selected_setup(ctx, inputs, output):
    q, k, v, idx, select_size, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, idx, o, lse)
    ctx.args = (select_size, scale)


def _selected_grad(ctx, do, dlse):
    # lse is internal (the public op returns o only), so its gradient is ignored
    q, k, v, idx, o, lse = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = selected_bwd(do, q, k, v, idx, o, lse, *ctx.args)
    return dq, dk, dv, None, None, None


selected_fwd.register_autograd(_selected_grad, setup_context=_selected_setup)

# ----------------------------------------------------------------------------------------------
# block selection (integer output, no gradient)


@torch.library.custom_op("nsa::select_blocks", mutates_args=())
def select_blocks_op(q: Tensor, k_cmp: Tensor, lse: Tensor, block_size: int, stride: int, select_size: int,
                     num_select: int, num_init: int, num_local: int, scale: float) -> Tensor:
    return _select_blocks_launch(q, k_cmp, lse, block_size=block_size, stride=stride, select_size=select_size,
                                 num_select=num_select, num_init=num_init, num_local=num_local, scale=scale)


@select_blocks_op.register_fake
def _(q, k_cmp, lse, block_size, stride, select_size, num_select, num_init, num_local, scale):
    B, T, _, _ = q.shape
    return q.new_empty(B, T, k_cmp.shape[2], num_select, dtype=torch.int32)


# ----------------------------------------------------------------------------------------------
# the public signatures (inputs already validated by kernels/__init__.py)


def compressed_attention(q: Tensor, k_cmp: Tensor, v_cmp: Tensor, *, block_size: int, stride: int,
                         scale: float | None = None) -> tuple[Tensor, Tensor]:
    if COMPRESSED_BACKEND != "triton" and cudnn_compressed.supported(q, k_cmp, v_cmp) and (
            COMPRESSED_BACKEND == "cudnn" or cudnn_compressed.pays_off(q, v_cmp, stride)):
        return cudnn_compressed.compressed_attention(q, k_cmp, v_cmp, block_size=block_size, stride=stride,
                                                     scale=scale)
    if not runs_triton(q):
        return chunked.compressed_attention(q, k_cmp, v_cmp, block_size=block_size, stride=stride, scale=scale)
    o, lse = band_fwd(q, k_cmp, v_cmp, stride, block_size - 1, -1, resolve_scale(scale, q.shape[-1]))
    return o, lse.float()


def select_blocks(q: Tensor, k_cmp: Tensor, lse: Tensor, *, block_size: int, stride: int, select_size: int,
                  num_select: int, num_init: int = 1, num_local: int = 2, scale: float | None = None) -> Tensor:
    if not runs_triton(q):
        return chunked.select_blocks(q, k_cmp, lse, block_size=block_size, stride=stride, select_size=select_size,
                                     num_select=num_select, num_init=num_init, num_local=num_local, scale=scale)
    return select_blocks_op(q.detach(), k_cmp.detach(), lse.detach(), block_size, stride, select_size, num_select,
                            num_init, num_local, resolve_scale(scale, q.shape[-1]))


def selected_attention(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, *, select_size: int,
                       scale: float | None = None) -> Tensor:
    if not runs_triton(q):
        return chunked.selected_attention(q, k, v, idx, select_size=select_size, scale=scale)
    return selected_fwd(q, k, v, idx, select_size, resolve_scale(scale, q.shape[-1]))[0]


def window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, scale: float | None = None) -> Tensor:
    if not runs_triton(q):
        return chunked.window_attention(q, k, v, window=window, scale=scale)
    return band_fwd(q, k, v, 1, 0, window, resolve_scale(scale, q.shape[-1]))[0]


TRITON_OPS: dict[str, Callable] = {
    "compressed_attention": compressed_attention,
    "select_blocks": select_blocks,
    "selected_attention": selected_attention,
    "window_attention": window_attention,
}
