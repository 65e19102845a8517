"""NSA kernel ops (interface: /work/shared/NSA.md, "Functional kernel interface").

    compressed_attention(q, k_cmp, v_cmp, *, block_size, stride, scale=None, q_start=0) -> (o, lse)
    select_blocks(q, k_cmp, lse, *, block_size, stride, select_size, num_select,
                  num_init=1, num_local=2, scale=None, q_start=0) -> idx
    selected_attention(q, k, v, idx, *, select_size, scale=None, q_start=0) -> o
    window_attention(q, k, v, *, window, scale=None, q_start=0) -> o
and, for the model's convenience, ops that chain two of them (for a decoding step the decode kernels may run
them with fewer launches; anything else calls the two ops):
    compressed_attention_and_select(q, k_cmp, v_cmp, *, block_size, stride, select_size, num_select,
                                    num_init=1, num_local=2, scale=None, q_start=0) -> (o, lse, idx)
    selected_and_window_attention(q, k_slc, v_slc, idx, k_win, v_win, *, select_size, window, scale=None,
                                  q_start=0) -> (o_slc, o_win)

`q_start`: q's rows are the queries at positions q_start .. q_start+T-1 and the keys cover positions
0 .. q_start+T-1 (queries after a cached prefix: chunked prefill, decoding); see kernels/reference.py.

Each op checks its sizes (one-line ValueError), then dispatches:
- CUDA tensors, or CPU tensors with TRITON_INTERPRET=1: the Triton kernel registered for the op in
  `TRITON_OPS` (kernels/ops.py over kernels/triton_*.py; registered only where it can run, see
  `_register_triton_ops`); an op not registered, or called with q_start != 0 when its kernel has no
  `q_start` argument, takes the PyTorch path below (which runs on CUDA tensors too).
  compressed_attention on half-precision CUDA tensors can run cuDNN's fused attention instead
  (kernels/cudnn_compressed.py): never (NSA_COMPRESSED_BACKEND=triton), where it measured faster
  (=auto, the default: long sequences) or always (=cudnn); kernels/ops.py COMPRESSED_BACKEND.
- otherwise: kernels/chunked.py, vectorised PyTorch over query tiles (never a [T, T] matrix).
One decoding step (T == 1, any q_start) on such tensors takes the decode kernel in `TRITON_DECODE_OPS`
(kernels/triton_decode.py: split along the context, group-centric) instead; it runs the chunked path itself
when a gradient is needed.
kernels/reference.py is the dense executable specification both are tested against.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable

import torch

from kernels import chunked, reference
from kernels.reference import (
    check_attention_inputs,
    check_block_indices,
    check_lse,
    check_nsa_sizes,
    check_q_start,
    num_compressed_tokens,
)

__all__ = [
    "compressed_attention",
    "select_blocks",
    "compressed_attention_and_select",
    "selected_attention",
    "window_attention",
    "selected_and_window_attention",
    "check_nsa_sizes",
    "num_compressed_tokens",
    "reference",
    "TRITON_OPS",
    "TRITON_DECODE_OPS",
    "runs_triton_decode",
]

# The single place where the Triton kernels plug in: op name -> function with the op's exact
# signature. `_register_triton_ops` below fills it from kernels/ops.py (the torch.library ops over
# kernels/triton_*.py); an op missing here falls back to the PyTorch path on every device.
TRITON_OPS: dict[str, Callable] = {}
# Same for one decoding step (q of length 1): op name -> kernels/triton_decode.py function (signature + q_start).
TRITON_DECODE_OPS: dict[str, Callable] = {}


def _register_triton_ops() -> None:
    """Fill TRITON_OPS when the Triton kernels can run in this process: on a machine with CUDA, or on CPU
    with TRITON_INTERPRET=1 set before triton is first imported (Triton fixes the mode at import).
    Elsewhere (or without triton installed) triton is not imported at all."""
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return
    try:
        from kernels import ops, triton_decode
    except ImportError:  # no triton on this platform
        return
    TRITON_OPS.update(ops.TRITON_OPS)
    TRITON_DECODE_OPS.update(triton_decode.TRITON_DECODE_OPS)


def _wants_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def runs_triton_decode(x: torch.Tensor) -> bool:
    """True when a decoding step on tensors like x runs the Triton decode kernels (kernels/triton_decode.py,
    whose *_at variants read the position from the device: what the model's CUDA-graph decoding step uses)."""
    return bool(TRITON_DECODE_OPS) and _wants_triton(x)


def _decode_impl(name: str, x: torch.Tensor) -> Callable | None:
    """The decode kernel of op `name` when x is one decoding step (T == 1) it can run, else None."""
    return TRITON_DECODE_OPS.get(name) if _wants_triton(x) and x.shape[1] == 1 else None


def _impl(name: str, x: torch.Tensor, q_start: int = 0) -> Callable:
    """The function that runs op `name` for tensors like `x` (q_start already bound when non-zero)."""
    decode = _decode_impl(name, x)
    if decode is not None:  # one decoding step
        return functools.partial(decode, q_start=q_start)
    fn = TRITON_OPS.get(name) if _wants_triton(x) else None
    if fn is None or (q_start and not _takes_q_start(fn)):
        fn = getattr(chunked, name)
    return functools.partial(fn, q_start=q_start) if q_start else fn


@functools.cache
def _takes_q_start(fn: Callable) -> bool:
    return "q_start" in inspect.signature(fn).parameters


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, block_size: int,
                         stride: int, scale: float | None = None,
                         q_start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B,T,Hq,Dk], k_cmp [B,Tc,Hkv,Dk], v_cmp [B,Tc,Hkv,Dv] -> o [B,T,Hq,Dv], lse [B,T,Hq] float32.

    q's rows are positions q_start .. q_start+T-1; Tc = num_compressed_tokens(q_start + T, block_size, stride);
    compressed token i is visible to the query at position t iff i*stride + block_size - 1 <= t; o = 0 and
    lse = -inf where none is.
    """
    check_nsa_sizes(block_size=block_size, stride=stride)
    check_q_start("compressed_attention", q_start)
    check_attention_inputs("compressed_attention", q, k_cmp, v_cmp, names=("k_cmp", "v_cmp"), q_start=q_start,
                           num_keys=num_compressed_tokens(q_start + q.shape[1], block_size, stride))
    return _impl("compressed_attention", q, q_start)(q, k_cmp, v_cmp, block_size=block_size, stride=stride,
                                                     scale=scale)


def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, *, block_size: int, stride: int,
                  select_size: int, num_select: int, num_init: int = 1, num_local: int = 2,
                  scale: float | None = None, q_start: int = 0) -> torch.Tensor:
    """q [B,T,Hq,Dk], k_cmp [B,Tc,Hkv,Dk], lse [B,T,Hq] -> int32 idx [B,T,Hkv,num_select]. No gradient.

    q's rows are positions t = q_start .. q_start+T-1 (Tc = num_compressed_tokens(q_start + T)).
    Forced: blocks 0 .. num_init-1 and the num_local most recent blocks t//l', t//l'-1, ... (>= 0);
    the rest: highest group-summed importance among visible blocks (j*l' <= t), ties to the lower id;
    -1 in unused slots. See kernels.reference.select_blocks for the exact definition.
    """
    check_nsa_sizes(block_size=block_size, stride=stride, select_size=select_size, num_select=num_select,
                    num_init=num_init, num_local=num_local)
    check_q_start("select_blocks", q_start)
    check_attention_inputs("select_blocks", q, k_cmp, k_cmp, names=("k_cmp", "k_cmp"), q_start=q_start,
                           num_keys=num_compressed_tokens(q_start + q.shape[1], block_size, stride))
    check_lse("select_blocks", lse, q)
    return _impl("select_blocks", q, q_start)(q, k_cmp, lse, block_size=block_size, stride=stride,
                                     select_size=select_size, num_select=num_select, num_init=num_init,
                                     num_local=num_local, scale=scale)


def compressed_attention_and_select(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, block_size: int,
                                    stride: int, select_size: int, num_select: int, num_init: int = 1,
                                    num_local: int = 2, scale: float | None = None,
                                    q_start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, lse) = compressed_attention(q, k_cmp, v_cmp, ...) and idx = select_blocks(q, k_cmp, lse, ...), same
    shapes and rules. A decoding step on the Triton path may let the selection read the scores compressed
    attention computed (kernels/triton_decode.py, the selection tiles' scores_from); anything else calls the two
    ops."""
    sel = dict(select_size=select_size, num_select=num_select, num_init=num_init, num_local=num_local)
    decode = _decode_impl("compressed_attention_and_select", q)
    if decode is None:
        o, lse = compressed_attention(q, k_cmp, v_cmp, block_size=block_size, stride=stride, scale=scale,
                                      q_start=q_start)
        return o, lse, select_blocks(q, k_cmp, lse, block_size=block_size, stride=stride, **sel, scale=scale,
                                     q_start=q_start)
    check_nsa_sizes(block_size=block_size, stride=stride, **sel)
    check_q_start("compressed_attention_and_select", q_start)
    check_attention_inputs("compressed_attention", q, k_cmp, v_cmp, names=("k_cmp", "v_cmp"), q_start=q_start,
                           num_keys=num_compressed_tokens(q_start + 1, block_size, stride))
    return decode(q, k_cmp, v_cmp, block_size=block_size, stride=stride, **sel, scale=scale, q_start=q_start)


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *,
                       select_size: int, scale: float | None = None, q_start: int = 0) -> torch.Tensor:
    """q [B,T,Hq,Dk], k [B,S,Hkv,Dk], v [B,S,Hkv,Dv] with S = q_start + T, idx [B,T,Hkv,n] -> o [B,T,Hq,Dv].

    Row r (position t = q_start + r), head h attends to keys s <= t of the blocks idx[b, r, h // G, :]
    (-1 ignored).
    """
    check_nsa_sizes(select_size=select_size)
    check_q_start("selected_attention", q_start)
    check_attention_inputs("selected_attention", q, k, v, num_keys=q_start + q.shape[1], q_start=q_start)
    check_block_indices("selected_attention", idx, q, k)
    return _impl("selected_attention", q, q_start)(q, k, v, idx, select_size=select_size, scale=scale)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int,
                     scale: float | None = None, q_start: int = 0) -> torch.Tensor:
    """q [B,T,Hq,Dk], k [B,S,Hkv,Dk], v [B,S,Hkv,Dv] with S = q_start + T -> o [B,T,Hq,Dv]; the query at
    position t = q_start + r sees keys t-window < s <= t."""
    check_nsa_sizes(window=window)
    check_q_start("window_attention", q_start)
    check_attention_inputs("window_attention", q, k, v, num_keys=q_start + q.shape[1], q_start=q_start)
    return _impl("window_attention", q, q_start)(q, k, v, window=window, scale=scale)


def selected_and_window_attention(q: torch.Tensor, k_slc: torch.Tensor, v_slc: torch.Tensor, idx: torch.Tensor,
                                  k_win: torch.Tensor, v_win: torch.Tensor, *, select_size: int, window: int,
                                  scale: float | None = None,
                                  q_start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected_attention(q, k_slc, v_slc, idx, ...), window_attention(q, k_win, v_win, ...)), same shapes and
    rules. The two branches are independent: a decoding step on the Triton path runs both in one launch (a
    step is a chain of short, latency-bound launches, so one fewer link matters); anything else calls the two
    ops."""
    decode = _decode_impl("selected_and_window_attention", q)
    if decode is None:
        return (selected_attention(q, k_slc, v_slc, idx, select_size=select_size, scale=scale, q_start=q_start),
                window_attention(q, k_win, v_win, window=window, scale=scale, q_start=q_start))
    check_nsa_sizes(select_size=select_size, window=window)
    check_q_start("selected_and_window_attention", q_start)
    check_attention_inputs("selected_attention", q, k_slc, v_slc, num_keys=q_start + 1, q_start=q_start)
    check_attention_inputs("window_attention", q, k_win, v_win, num_keys=q_start + 1, q_start=q_start)
    check_block_indices("selected_attention", idx, q, k_slc)
    if (k_win.shape[3], v_win.shape[3]) != (k_slc.shape[3], v_slc.shape[3]):
        raise ValueError(f"selected_and_window_attention: the window branch's head dims {k_win.shape[3]}/"
                         f"{v_win.shape[3]} differ from the selected branch's {k_slc.shape[3]}/{v_slc.shape[3]}: "
                         "call selected_attention and window_attention separately")
    return decode(q, k_slc, v_slc, idx, k_win, v_win, select_size=select_size, window=window, scale=scale,
                  q_start=q_start)


_register_triton_ops()
