"""Helpers shared by the Triton NSA kernels (kernels/triton_*.py): dtypes, tile sizes, launch plumbing.

The kernels run compiled on CUDA tensors, and on CPU tensors under Triton's interpreter when the
environment variable TRITON_INTERPRET=1 was set before triton was first imported (that is how CI
tests them). `INTERPRETED` records which of the two this process got.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

# Triton decides at decoration time (when kernels/triton_*.py is imported) whether @triton.jit
# functions are interpreted; the same variable, read at the same time, tells the launchers.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOG2E = 1.4426950408889634

# Tile sizes of the compiled (GPU) kernels, per kernel, for head dims up to 128 ("small") and past 128
# ("big", e.g. Dk=192 padded to 256); an optional "d64" entry changes some of "small"'s values for head dims up
# to 64 (gpu_tiles). rows = query rows per tile (positions x G heads padded to a power
# of two), block_n = keys per tile, warps/stages = Triton's num_warps/num_stages, seg_len = queries per
# dK/dV work item of the selection branch. The interpreter uses small fixed tiles instead.
# `scripts/bench_attention.py --sections tune` measures alternatives on the GPU (docs/benchmarks.md);
# NSA_TRITON_TILES=path.json ({kernel: {"small"|"big"|"d64": {...}}}) overrides entries for experiments.
# "small" entries: the winners of that search on an H100 (T=32k, Hq=64, Hkv=4, D=128), changed since where a
# comment gives the H200 timing that did it; "big": untuned.
GPU_TILES: dict[str, dict[str, dict[str, int]]] = {
    # tma 1 (band_fwd, band_dq): K/V tiles through tensor descriptors (TMA) instead of per-thread gathers. H100, main
    # shape, interleaved runs (twelfth session, docs/benchmarks.md): compressed forward at 64k 12.1-12.4 -> 10.3-10.5
    # ms, window forward 3.75-3.82 -> 3.33-3.43; with TMA the tune section moved the dQ to 64 rows and 4 warps.
    # (Q/dO tiles of the dK/dV through TMA spilled 144 bytes, so that kernel has none.) "big" and "d64" (the small
    # training model's heads): not timed with TMA, so they keep the gathers and the tiles they were timed with.
    "band_fwd": {"small": dict(rows=64, block_n=64, warps=4, stages=3, tma=1),
                 "big": dict(rows=64, block_n=64, warps=4, stages=2, tma=0),
                 "d64": dict(tma=0)},
    # split_waves (compressed branch): its queries are split so that about this many waves of programs have
    # work (key tile j is seen by the queries from j*d + l - 1 on: a triangle, see band_backward). One wave
    # left the small model's key tiles (Hkv = 1, T = 32k: 32 tiles) on 149 programs, 1.74 ms per call, 3x the
    # window branch's dK/dV (H200 profile, docs/benchmarks.md).
    # Tile options key_major (products key-major) and interior (no mask where a query tile sees the whole key tile)
    # lost every H100 timing and were removed: 64k training, head dim 64, 206.7-206.9k (interior), 207.9k (key_major)
    # tokens/s against 207.3-208.7k; main shape at 64k, 53.80 ms against 54.84 (interior), 54.46-56.72 (key_major),
    # 58.62 (both). docs/benchmarks.md, "Twenty-fourth session"; the code last existed at commit 90dc95f.
    "band_dkdv": {"small": dict(rows=128, block_n=64, warps=8, stages=2, split_waves=4),
                  "big": dict(rows=64, block_n=32, warps=4, stages=2, split_waves=4)},
    # fused_delta 1 (band_dq, selected_dq): the dQ kernel computes the softmax row term delta = rowsum(o * do) - dlse
    # from the rows it holds and stores it for the dK/dV kernel, which runs after it; 0: a pass of its own over o and
    # do (row_delta), ~94 us per call at 64k for the small training model (two per layer: window and selected; 9 ms
    # of a 1.29 s step, H100 profile, sixteenth session, docs/benchmarks.md). Compiled without spills and with the
    # same loops as without it (sass_report.py band-dq-d64 band-dq-d64-separate-delta ...). On since the
    # twenty-second session with wdot (below), for "small" (and so "d64"): together, 64k training on an H100, two
    # interleaved runs each, 205.5-206.3k -> 207.3-208.1k tokens/s (+0.9%); the bf16 GPU tests of both kernels pass
    # with it at every head shape. "big": untimed, off.
    "band_dq": {"small": dict(rows=64, block_n=64, warps=4, stages=2, tma=1, fused_delta=1),
                "d64": dict(rows=128, warps=8, tma=0),
                "big": dict(rows=64, block_n=32, warps=4, stages=2, tma=0, fused_delta=0)},
    # Tune section at the main shape, 32k, H200 (ninth session): 128 rows 2.49 ms, 64 rows 3.41, 8 warps 3.07,
    # 3 stages 3.05; inserting up to 2 / 4 / 8 entering candidates one at a time instead of sorting (an option
    # until then) 2.80 / 2.88 / 2.99. "big": untimed.
    # tma 1: the compressed keys through a tensor descriptor (one TMA copy per tile of C_PAD tokens). Slower on an
    # H100 (thirteenth session): tune section at 32k 2.58 -> 2.90 ms (2.91 with 3 stages); interleaved runs at 64k
    # 9.09-9.33 -> 9.55-10.08 ms. So off.
    # wdot 1 (num_select > 8): each head's block scores as a product p @ overlap weights, then the sum over the
    # group's heads on 16 columns instead of 64 (kernels/triton_select.py). On since the twenty-second session: with
    # fused_delta (above) +0.9% in 64k training (H100, interleaved runs); alone +0.7% in one run (twenty-first); the
    # bf16 GPU test passes at every shape it has.
    "select": {"small": dict(rows=128, warps=4, stages=2, tma=0, wdot=1),
               "big": dict(rows=64, warps=4, stages=2, tma=0, wdot=1)},
    # share = query positions per program that load the union of their selected blocks once (1: one position
    # per program, the paper's kernel; see kernels/triton_selected.py); with fewer than pack_below_g heads per
    # group, programs take at least the 16/G positions that fill the MMA rows. Measured with bench_attention.py
    # --sections share (H200, docs/benchmarks.md), on random selections and on selections where neighbours agree
    # as much as in trained models (4 neighbours load 6.5 of 15 blocks; trained: 6.2): G = 1 and 2 win forward and
    # dQ on both (G=1 8k forward 37.9 -> 15.7 ms random); G = 4 wins on trained-like selections (32k forward 36.5
    # -> 31.3 ms) but loses on random ones at 32k (36.8 -> 44.1 ms) and its dQ does not win; G = 8 ties at best;
    # G = 16 always loses. Hence forward packs below G = 8, dQ below G = 4.
    # The sharing tiles have P*G rows (64 at G=16), so they get share_warps and, for dQ, share_block_n keys per
    # step: what keeps them free of register spills when compiled for sm_90 (ptxas -v, Triton 3.9).
    # d64: the tune section at the small training model's heads (Hq=16, Hkv=1, D=64, 32k, H200, ninth session):
    # 2 warps took the forward from 1.49 to 1.24 ms and the dQ from 4.86 to 4.68 (no other kernel's alternative
    # beat its default by more than the noise of repeated timings).
    # block_n: keys per step of the one-position forward and dQ (a selection block of l' keys takes l' / block_n
    # steps; 32 gained nothing on the H200, tenth session). Main shape, H200, tenth session: the forward with 2
    # warps and 2 stages 8.75 ms against 9.39 with 4 warps and 3 stages (tune section); 2 stages keep more
    # programs on each SM (2 x 32 KB of K/V tiles in shared memory per program at D = 128). The sharing kernel
    # keeps its 3 stages (share_stages): with 2, the G sweep's packed forwards (G = 1, 2, 4) took 2-5% longer.
    # tma 1: the one-position forward and dQ read each K/V tile through tensor descriptors (one TMA copy per tile)
    # instead of per-thread gathers. H100, main shape, interleaved runs (twelfth session): the forward at 64k
    # 18.3 -> 16.0-16.5 ms with 3 stages (the tune section's pick with TMA), 8k 2.31 -> 2.01; the dQ through TMA
    # gained nothing measurable, so it keeps its gathers.
    "selected_fwd": {"small": dict(warps=2, stages=3, block_n=64, share=1, pack_below_g=8, share_warps=8,
                                   share_stages=3, tma=1),
                     "big": dict(warps=4, stages=3, block_n=64, share=1, pack_below_g=8, share_warps=8, tma=0),
                     "d64": dict(warps=2, stages=3, tma=0)},
    "selected_dq": {"small": dict(warps=4, stages=2, block_n=64, share=1, pack_below_g=4, share_warps=8,
                                  share_block_n=32, tma=0, fused_delta=1),
                    "big": dict(warps=4, stages=2, block_n=64, share=1, pack_below_g=4, share_warps=8,
                                share_block_n=32, tma=0, fused_delta=0),
                    "d64": dict(warps=2, stages=3)},
    # atomic 1: no inverted index; the dQ kernel adds each (query, key tile)'s dK/dV with float32 atomics (the
    # issue's other design, for comparison in the tune section: 195 ms against 30.6 ms for the inverted index at
    # 32k, H200, docs/benchmarks.md; likely contention on blocks many queries choose). It runs with atomic_warps:
    # compiled for sm_90 it spills 940 bytes at 4 warps, 48 at 8 (ptxas -v, Triton 3.9).
    # key_major 1: the four products key-major (s^T = K Q^T, [keys, rows]; add_key_grads_t), so each has the 64 key
    # rows and all four are wgmmas. H100, main shape, thirteenth session (docs/benchmarks.md): tune section at 32k
    # 31.9 ms (row-major, 1 stage) -> 28.0 (key-major, 4 warps, 2 stages; 29.0 at 1 stage, 35.8 at 8 warps);
    # interleaved runs at 64k, selected forward+backward 64.3 -> 56.5 ms. At the small model's heads (D = 64, "d64")
    # the tune section gave 5.10 -> 4.21 ms at 1 stage, 4.40 at 2.
    # Why not row-major pipelined: with 32 query rows its QK^T and dO V^T are plain MMAs, and Triton 3.6/3.9's
    # pipeliner then gives the gathered Q and dO one shared-memory buffer that the next rows' async copies overwrite
    # while the dK / dV wgmmas still read it (TTGIR: warp_group_dot_wait pendings 3, then async_copy_global_to_local
    # into the same buffer). On an H100 at D = 128, 2 stages, that made dK wrong in every run (0.9% from float64;
    # twelfth session). Key-major (and row-major at 64 rows, 8 warps) gets two buffers and a full wait before a
    # buffer is refilled: scripts/race_scan.py checks every shipped build for the pattern, and
    # tests/test_kernels_gpu.py: test_selected_backward_repeats_and_tma_matches_gathers checks that dK repeats.
    # "big" (Dk = 192, 32-key steps): not timed key-major, so row-major at 1 stage (right by construction).
    "selected_dkdv": {"small": dict(rows=32, block_n=64, warps=4, stages=2, seg_len=256, atomic=0, atomic_warps=8,
                                    key_major=1),
                      "d64": dict(stages=1),
                      "big": dict(rows=32, block_n=32, warps=4, stages=1, seg_len=256, atomic=0, atomic_warps=8,
                                  key_major=0)},
}
if os.environ.get("NSA_TRITON_TILES"):
    with open(os.environ["NSA_TRITON_TILES"]) as f:
        for _kernel, _sizes in json.load(f).items():
            for _size, _cfg in _sizes.items():
                GPU_TILES[_kernel].setdefault(_size, {}).update(_cfg)


def tma_descriptor(x: torch.Tensor, box: list[int]) -> TensorDescriptor | None:
    """A tensor descriptor over x (all of it) read in boxes of shape box, for TMA loads (`desc.load`); None where
    x's layout rules TMA out (last stride not 1, another stride or the base not 16-byte aligned)."""
    size = x.element_size()
    if x.stride(-1) != 1 or x.data_ptr() % 16 or any(st * size % 16 for st in x.stride()[:-1]):
        return None
    return TensorDescriptor(x, list(x.shape), list(x.stride()), box)


def kv_descriptors(cfg: dict[str, int], k: torch.Tensor, v: torch.Tensor, block_n: int, bdk: int,
                   bdv: int) -> tuple[TensorDescriptor, TensorDescriptor] | None:
    """K, V [B, T, Hkv, D] as tensor descriptors with [1, block_n, 1, D] boxes (kv_block) when the tiles ask for
    TMA loads (cfg["tma"]) and both layouts allow them; else None (the kernels then take pointers)."""
    if not cfg.get("tma"):
        return None
    kd, vd = tma_descriptor(k, [1, block_n, 1, bdk]), tma_descriptor(v, [1, block_n, 1, bdv])
    return (kd, vd) if kd is not None and vd is not None else None


@functools.cache
def _device_properties(index: int):
    return torch.cuda.get_device_properties(index)


def device_properties(device: torch.device):
    """A CUDA device's properties (queried once per device; the current device for an index-less one)."""
    return _device_properties(device.index if device.index is not None else torch.cuda.current_device())


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return device_properties(device).multi_processor_count


@contextlib.contextmanager
def tiles_set(*entries: dict, **updates) -> Iterator[None]:
    """Within the block, the tile dicts `entries` (GPU_TILES / DECODE_TILES entries) take `updates`; afterwards
    they hold what they held before (benchmarks trying tile alternatives)."""
    saved = [dict(e) for e in entries]
    for e in entries:
        e.update(updates)
    try:
        yield
    finally:
        for e, old in zip(entries, saved):
            e.clear()
            e.update(old)


def tile_size_class(block_d: int) -> str:
    """Which GPU_TILES entry serves a head dim padded to block_d (head_block): "d64", "small" or "big"."""
    return "big" if block_d > 128 else "d64" if block_d <= 64 else "small"


def gpu_tiles(kernel: str, block_d: int) -> dict[str, int]:
    """The GPU tile sizes of `kernel` (a GPU_TILES key) for a head dim padded to block_d: "big" past 128,
    else "small" with the changes of a "d64" entry for head dims up to 64."""
    sizes, size = GPU_TILES[kernel], tile_size_class(block_d)
    if size == "d64":
        return {**sizes["small"], **sizes.get("d64", {})}
    return sizes[size]


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else triton.next_power_of_2(int(x))


def runs_triton(x: torch.Tensor) -> bool:
    """True when the Triton kernels can run on x's device in this process."""
    return x.is_cuda or (x.device.type == "cpu" and INTERPRETED)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation/softmax dtype, as in kernels.reference.compute_dtype: float64 stays, the rest float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: full precision for float32/float64 operands (tf32 would cost ~3e-4
    relative error), irrelevant (the native MMA) for 16-bit operands."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def head_block(d: int) -> int:
    """Feature-dim tile: the next power of two, at least 16 (tl.dot's minimum K/N)."""
    return max(16, next_pow2(d))


def bthd(x: torch.Tensor) -> torch.Tensor:
    """x with a unit stride on its last (feature) dim, which the kernels assume."""
    return x if x.stride(-1) == 1 else x.contiguous()


def check_launchable(*tensors: torch.Tensor) -> None:
    for x in tensors:
        if not runs_triton(x):
            raise RuntimeError(f"NSA Triton kernels: got a tensor on {x.device}; they run on CUDA tensors, or on "
                               f"CPU tensors when TRITON_INTERPRET=1 is set before triton is imported")


@triton.jit
def group_rows(pid_m, pid_bh, T, Hkv, G, NPOS: tl.constexpr, G_PAD: tl.constexpr):
    """The query rows of a group-centric tile: program (pid_m, pid_bh) owns positions t0 = pid_m * NPOS .. t0 + NPOS - 1
    and the G query heads of KV head kvh of batch b; row r holds position t0 + r // G_PAD and head kvh*G + r % G_PAD.
    Returns b (int64), kvh, t0, pos [R] (int32), head [R] (int64) and row_ok [R] (false for the padding heads and
    for positions past T)."""
    b = (pid_bh // Hkv).to(tl.int64)
    kvh = pid_bh % Hkv
    t0 = pid_m * NPOS
    rows = tl.arange(0, NPOS * G_PAD)
    pos = t0 + rows // G_PAD
    g = rows % G_PAD
    return b, kvh, t0, pos, (kvh * G + g).to(tl.int64), (g < G) & (pos < T)


@triton.jit
def group_heads(pid_bh, Hkv, G, G_PAD: tl.constexpr):
    """The rows of a one-position program: the G query heads of KV head kvh of batch b, padded to G_PAD rows.
    Returns b (int64), kvh, head [G_PAD] (int64) and row_ok [G_PAD] (false for the padding)."""
    b = (pid_bh // Hkv).to(tl.int64)
    kvh = pid_bh % Hkv
    g = tl.arange(0, G_PAD)
    return b, kvh, (kvh * G + g).to(tl.int64), g < G


@triton.jit
def load_heads(X, b, t, head, row_ok, s_b, s_t, s_h, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows [R, BLOCK_D] of a [B, T, H, D] tensor X (strides s_b, s_t, s_h; the last dim contiguous) at batch b,
    one int64 position t and heads head [R]; 0 where not row_ok and past D."""
    offs = tl.arange(0, BLOCK_D)
    return tl.load(X + b * s_b + t * s_t + head[:, None] * s_h + offs[None, :],
                   mask=row_ok[:, None] & (offs[None, :] < D), other=0.0)


@triton.jit
def load_rows(X, b, pos, head, row_ok, s_b, s_t, s_h, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows [R, BLOCK_D] of a [B, T, H, D] tensor X (strides s_b, s_t, s_h; the last dim contiguous) at batch b,
    int64 positions pos [R] and heads head [R]; 0 where not row_ok and past D."""
    offs = tl.arange(0, BLOCK_D)
    return tl.load(X + b * s_b + pos[:, None] * s_t + head[:, None] * s_h + offs[None, :],
                   mask=row_ok[:, None] & (offs[None, :] < D), other=0.0)


@triton.jit
def attend_tile(q, k_base, v_base, kpos, k_ok, sk_t, sv_t, m_i, l_i, acc, qk_scale,
                 DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                 ACC: tl.constexpr, PREC: tl.constexpr):
    """Online-softmax update of (m_i, l_i, acc) [R], [R], [R, BLOCK_DV] for query rows q [R, BLOCK_DK] with the
    keys kpos [BLOCK_N] (int64 positions, k_ok = which every row attends). Scores are in log2 units
    (qk_scale includes log2 e); rows that have seen no key yet stay finite (no NaN)."""
    return attend_tile_rows(q, k_base, v_base, kpos, k_ok, k_ok[None, :], sk_t, sv_t, m_i, l_i, acc, qk_scale,
                            DK, DV, BLOCK_DK, BLOCK_DV, ACC, PREC)


@triton.jit
def row_lse(m, l_sum):
    """lse (natural log) of softmax rows from their running maximum m (log2 units) and sum l: -inf where l = 0
    (a row that saw no key)."""
    nonempty = l_sum > 0
    return tl.where(nonempty, (m + tl.log2(tl.where(nonempty, l_sum, 1.0))) * 0.6931471805599453, float("-inf"))


@triton.jit
def finish_rows(m_i, l_i, acc):
    """Normalised output rows acc / l (0 for a row that saw no key) and their lse (row_lse)."""
    return acc / tl.where(l_i > 0, l_i, 1.0)[:, None], row_lse(m_i, l_i)


@triton.jit
def row_block(XD, b, start, h, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows start .. start + BLOCK_N - 1 [BLOCK_N, BLOCK_D] of head h in batch b, through a tensor descriptor over
    X [B, T, H, D] (TMA on Hopper; rows past T and columns past D read 0)."""
    return XD.load([b.to(tl.int32), start, h, 0]).reshape(BLOCK_N, BLOCK_D)


@triton.jit
def kv_block(KD, VD, b, start, kvh, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """K [BLOCK_N, BLOCK_DK] and V [BLOCK_N, BLOCK_DV] rows start .. start + BLOCK_N - 1 of KV head kvh (row_block)."""
    return row_block(KD, b, start, kvh, BLOCK_N, BLOCK_DK), row_block(VD, b, start, kvh, BLOCK_N, BLOCK_DV)


@triton.jit
def load_kv_tile(k_base, v_base, kpos, k_ok, sk_t, sv_t, DK: tl.constexpr, DV: tl.constexpr,
                 BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """K [BLOCK_N, BLOCK_DK] and V [BLOCK_N, BLOCK_DV] rows at key positions kpos (0 where not k_ok)."""
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(k_base + kpos[:, None] * sk_t + offs_dk[None, :], mask=k_ok[:, None] & (offs_dk[None, :] < DK),
                other=0.0)
    v = tl.load(v_base + kpos[:, None] * sv_t + offs_dv[None, :], mask=k_ok[:, None] & (offs_dv[None, :] < DV),
                other=0.0)
    return k, v


@triton.jit
def attend_kv(q, k, v, vis, m_i, l_i, acc, qk_scale, ACC: tl.constexpr, PREC: tl.constexpr):
    """Online-softmax update of (m_i, l_i, acc) [R], [R], [R, BLOCK_DV] for query rows q [R, BLOCK_DK] with loaded
    keys k [BLOCK_N, BLOCK_DK] and values v [BLOCK_N, BLOCK_DV]; vis [R, BLOCK_N] (or anything that broadcasts to
    it) = which keys each row attends. Scores are in log2 units (qk_scale includes log2 e); rows that have seen no
    key yet stay finite (no NaN)."""
    return attend_scores(qk_scores(q, k, qk_scale, ACC, PREC), v, vis, m_i, l_i, acc, ACC, PREC)


@triton.jit
def qk_scores(q, k, qk_scale, ACC: tl.constexpr, PREC: tl.constexpr):
    """Scores [R, BLOCK_N] of query rows q [R, BLOCK_DK] against keys k [BLOCK_N, BLOCK_DK], in log2 units
    (qk_scale includes log2 e)."""
    return tl.dot(q, tl.trans(k), out_dtype=ACC, input_precision=PREC) * qk_scale


@triton.jit
def attend_scores(s, v, vis, m_i, l_i, acc, ACC: tl.constexpr, PREC: tl.constexpr):
    """attend_kv from the scores s [R, BLOCK_N] (qk_scores) of the keys whose values are v [BLOCK_N, BLOCK_DV]."""
    s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=ACC, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def attend_tile_rows(q, k_base, v_base, kpos, k_ok, vis, sk_t, sv_t, m_i, l_i, acc, qk_scale,
                     DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                     ACC: tl.constexpr, PREC: tl.constexpr):
    """attend_tile with a per-row mask: k_ok [BLOCK_N] = which keys are loaded, vis [R, BLOCK_N] (or anything
    that broadcasts to it) = which of them each row attends."""
    k, v = load_kv_tile(k_base, v_base, kpos, k_ok, sk_t, sv_t, DK, DV, BLOCK_DK, BLOCK_DV)
    return attend_kv(q, k, v, vis, m_i, l_i, acc, qk_scale, ACC, PREC)


# ---- softmax backward (dQ and dK/dV of every attention kernel) --------------------------------------------------


@triton.jit
def lse_log2(lse):
    """A row's lse (natural log) in log2 units, the kernels' score units; +inf where the row saw no key (lse = -inf),
    so that its probabilities exp2(s - lse2) are 0 rather than NaN."""
    return tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)


@triton.jit
def load_lse2(LSE, row, row_ok):
    """The rows' lse (row = flat [B, T, Hq] index into the contiguous LSE) in log2 units (lse_log2; +inf for
    masked rows)."""
    return lse_log2(tl.load(LSE + row, mask=row_ok, other=float("inf")))


@triton.jit
def load_softmax_stats(LSE, DELTA, row, row_ok):
    """The backward's per-row statistics (row = flat [B, T, Hq] index into the contiguous LSE and DELTA): lse in
    log2 units (load_lse2) and delta = rowsum(o * do)."""
    return load_lse2(LSE, row, row_ok), tl.load(DELTA + row, mask=row_ok, other=0.0)


@triton.jit
def store_row_delta(o, do, DLSE, DELTA, row, row_ok, HAS_DLSE: tl.constexpr):
    """The softmax backward's row term delta = rowsum(o * do) - dlse (dlse: gradient of lse, if HAS_DLSE) of rows o,
    do [R, D], in DELTA's dtype, stored at DELTA[row] (row [R]: flat index, masked by row_ok) and returned."""
    delta = tl.sum(o.to(DELTA.dtype.element_ty) * do.to(DELTA.dtype.element_ty), 1)
    if HAS_DLSE:
        delta = delta - tl.load(DLSE + row, mask=row_ok, other=0.0).to(DELTA.dtype.element_ty)
    tl.store(DELTA + row, delta, mask=row_ok)
    return delta


@triton.jit
def dq_softmax_stats(LSE, DELTA, DLSE, o, do, row, row_ok, FUSED_DELTA: tl.constexpr, HAS_DLSE: tl.constexpr):
    """A dQ kernel's per-row statistics (as load_softmax_stats) of rows o, do [R, D] (row [R]: flat [B, T, Hq] index).
    FUSED_DELTA: delta computed here (store_row_delta) and stored for the dK/dV kernel that runs after the dQ one:
    the row term where do is loaded anyway, not a pass of its own (kernels/triton_banded.py: row_delta). Else delta
    is loaded, and o is unused (the compiler drops its load)."""
    lse2 = load_lse2(LSE, row, row_ok)
    if FUSED_DELTA:
        delta = store_row_delta(o, do, DLSE, DELTA, row, row_ok, HAS_DLSE)
    else:
        delta = tl.load(DELTA + row, mask=row_ok, other=0.0)
    return lse2, delta


@triton.jit
def softmax_probs(q, k, lse2, vis, qk_scale, ACC: tl.constexpr, PREC: tl.constexpr):
    """The softmax probabilities p [R, BLOCK_N] of rows q against keys k (0 where not vis), recomputed from the
    forward's lse (log2 units)."""
    return tl.where(vis, tl.exp2(qk_scores(q, k, qk_scale, ACC, PREC) - lse2[:, None]), 0.0)


@triton.jit
def score_grads(p, do, v, delta, ACC: tl.constexpr, PREC: tl.constexpr):
    """The score gradients ds = p * (do v^T - delta) [R, BLOCK_N], with delta = rowsum(o * do)."""
    dp = tl.dot(do, tl.trans(v), out_dtype=ACC, input_precision=PREC)
    return p * (dp - delta[:, None])


@triton.jit
def dq_kv(q, do, lse2, delta, k, v, vis, dq, qk_scale, ACC: tl.constexpr, PREC: tl.constexpr):
    """dq [R, BLOCK_DK] += the contribution of loaded keys k and values v (vis: which keys each row attends), not
    yet multiplied by the softmax scale."""
    ds = score_grads(softmax_probs(q, k, lse2, vis, qk_scale, ACC, PREC), do, v, delta, ACC, PREC)
    return dq + tl.dot(ds.to(k.dtype), k, out_dtype=ACC, input_precision=PREC)


@triton.jit
def dq_tile_rows(q, do, lse2, delta, k_base, v_base, kpos, k_ok, vis, sk_t, sv_t, dq, qk_scale,
                 DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                 ACC: tl.constexpr, PREC: tl.constexpr):
    """The backward twin of attend_tile_rows: dq [R, BLOCK_DK] += the contribution of the keys kpos [BLOCK_N]
    (k_ok: which are loaded; vis, broadcastable to [R, BLOCK_N]: which each row attends), not yet multiplied by
    the softmax scale (the caller does that once)."""
    k, v = load_kv_tile(k_base, v_base, kpos, k_ok, sk_t, sv_t, DK, DV, BLOCK_DK, BLOCK_DV)
    return dq_kv(q, do, lse2, delta, k, v, vis, dq, qk_scale, ACC, PREC)


@triton.jit
def add_key_grads(q, do, lse2, delta, k, v, vis, dk, dv, qk_scale, ACC: tl.constexpr, PREC: tl.constexpr):
    """One key tile's gradients from query rows q [R, DK], do [R, DV]: dk += ds^T q [BLOCK_N, DK] (not yet times
    the softmax scale) and dv += p^T do [BLOCK_N, DV]. (ds before the dV product: the selected dK/dV kernel then
    spills 16 bytes instead of 192 (Triton 3.6, sm_90a) and selected attention's forward+backward is 4% faster on
    an H100; docs/benchmarks.md, eleventh session.)"""
    p = softmax_probs(q, k, lse2, vis, qk_scale, ACC, PREC)
    ds = score_grads(p, do, v, delta, ACC, PREC)
    dv += tl.dot(tl.trans(p.to(do.dtype)), do, out_dtype=ACC, input_precision=PREC)
    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, out_dtype=ACC, input_precision=PREC)
    return dk, dv


@triton.jit
def add_key_grads_t(q, do, lse2, delta, k, v, vis_t, dk, dv, qk_scale, ACC: tl.constexpr, PREC: tl.constexpr):
    """add_key_grads computed key-major: the scores as s^T = k q^T [BLOCK_N, R] (vis_t [BLOCK_N, R]), so that all four
    products have the BLOCK_N key rows (a wgmma at 64 keys even with 32 query rows) and p^T, ds^T feed dV and dK
    untransposed. Why it exists: with 32 query rows, add_key_grads' QK^T and dO V^T are 32-row MMAs and Triton 3.6/3.9
    then gives the pipelined Q/dO tiles one buffer, which the next rows' copies overwrite under the dK/dV wgmmas
    still in flight (the selected dK/dV's race); key-major, they get two (scripts/race_scan.py)."""
    st = tl.dot(k, tl.trans(q), out_dtype=ACC, input_precision=PREC) * qk_scale
    pt = tl.where(vis_t, tl.exp2(st - lse2[None, :]), 0.0)
    dst = pt * (tl.dot(v, tl.trans(do), out_dtype=ACC, input_precision=PREC) - delta[None, :])
    dv += tl.dot(pt.to(do.dtype), do, out_dtype=ACC, input_precision=PREC)
    dk += tl.dot(dst.to(q.dtype), q, out_dtype=ACC, input_precision=PREC)
    return dk, dv
