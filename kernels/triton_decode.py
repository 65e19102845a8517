"""Triton decode kernels for NSA: one new query per sequence (T == 1 at position t = q_start), batched.

A decoding step reads only what its query attends: the t // d - ... compressed tokens (compression branch and
block scoring), the n selected blocks and the w window keys. That is a few thousand keys per KV group even at
64k, far too little work for one program per (sequence, KV group) to fill the GPU at batch 1. So every kernel
here splits its keys along the context (flash-decoding): grid = (splits, B * Hkv), each program owning one
split of one KV group and all G query heads of that group (group-centric: each key is loaded once for the G
heads; G is padded to >= 16 rows for the tensor cores).

    attention (compressed / selected / window)  _decode_attn_kernel: a split computes the partial softmax
        state (row max m, row sum l, unnormalised output acc) of its keys; the splits are then combined.
    block selection                              _select_decode_kernel: a split scores its selection blocks
        (importance p = exp(q.k_cmp * scale - lse) summed over the group's heads, spread over the blocks by the
        overlap weights of NSA.md) and keeps its top-n candidate keys; the splits' candidates are then merged.

Combining the splits, two ways, chosen per kernel by the tiles (DECODE_TILES' `combine`, or a call's `combine`
argument). `combine="kernel"` (the default for both kernels) runs a second launch: for attention,
its programs each merge a slice of a group's output columns (the selected and window branches of a step share
that launch); for block selection, one program per group merges the splits' candidates. `combine="fused"` has
the last program of a KV group to finish combine them inside the same launch: each program stores its
partial, then increments a per-group counter with an acq_rel atomic; the one that sees count == splits - 1
reads every partial and writes the result, then resets the counter to 0 for the next launch. The counters live
in one zeroed int32 buffer per device that the kernels keep at zero (`_counters`); a second stream running
decode kernels concurrently on the same device would share them, which is not supported.

The top-n merge: candidates are int64 keys (score bits << 31) | (MAX_ID - block id), as in
kernels/triton_select.py (float32 scores >= 0 order like their bit patterns, forced blocks get +inf, the lower
id wins a tie, -1 = no candidate). A split holds at most NBT (= num_select rounded up to a power of two)
candidates per tile of blocks; the merge loads all splits' candidates as one [splits, NBT] tile and keeps the
NBT largest by a tree of bitonic merges (_select_choose).

A step is thus a chain of short dependent launches (five at the default tiles). With the tiles' `pdl` on (sm_90+),
each is launched with programmatic dependent launch: it may be scheduled while the kernel before it still runs,
and waits for it at its start (_chain_start), so that launch latency overlaps work.

Inputs are assumed valid (kernels/__init__.py checks them). Every position of a batch decodes at the same
q_start (the public ops' contract). No autograd: the public wrappers below run the chunked PyTorch path when a
gradient is needed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from kernels import chunked
from kernels.reference import num_compressed_tokens, resolve_scale
from kernels.triton_common import (
    INTERPRETED,
    LOG2E,
    acc_dtype,
    attend_scores,
    attend_tile,
    bthd,
    device_properties,
    dot_precision,
    finish_rows,
    group_heads,
    head_block,
    load_heads,
    load_kv_tile,
    lse_log2,
    next_pow2,
    qk_scores,
    row_lse,
    runs_triton,
    sm_count,
    tl_acc,
)
from kernels.triton_selected import _clean_idx, _slot_keys

# Tile sizes and split heuristics of the decode kernels. "small": head dims <= 128, "big": larger.
# attn: block_n keys per inner tile; split_factor scales the number of splits (see _attn_splits); max_splits
# caps it. select: tiles_per_split = selection-block tiles (NBV blocks each) per program before the cap
# max_splits forces more. attn warps 8: bench_decode's sweep winner at the main shape, B=1, 64k (61.8 -> 52.5 us,
# H200; docs/benchmarks.md), and the selected+window pair kernel spills at 4 (ptxas -v). select tiles_per_split 2:
# the sweep's winner at the same point in two runs (61.8 -> 58.3 us at 4 warps, 52.4 -> 49.2 us at 8).
# combine: how the splits are combined (COMBINE_MODES, below), per kernel: the attention ops' ("attn": compressed
# attention, and selected + window attention as one launch) and the selection's. "kernel" for both: in "fused", one
# program per KV group reads every split's state; for the attention ops at the main shape, 64k, that lone program
# was most of each op's time (Nsight Compute: its SM busy 17 us of the compressed op's 19), and "kernel" spreads the
# same reads over BLOCK_DV / COMBINE_COLS programs per group. NSA step, main shape, 64k (H200, docs/benchmarks.md):
# B = 1 47.8 -> 36.4 us, B = 8 102.7 -> 74.4 us, both kernels switched at once. The selection's merge is one
# program per group either way (a [splits, 16] tile of candidates), so "fused" only saves it a launch there; yet
# the step took 43.8 us with it against 38.0 (H100, main shape, 64k, B = 1, bench_decode.py's sweep, twenty-third
# session; why it is slower was not profiled), so "kernel" stays.
# select scores_from (SCORES_FROM): "keys", the selection scores the compressed keys again after compressed
# attention has combined its splits and stored the lse; "attention", compressed attention stores its scores and the
# selection reads them, its splits in the same launch as compressed attention's combine (one link fewer in the
# step's chain, and no compressed keys read twice; compressed_attention_and_select). "attention" with max_splits
# 20 for head dims <= 128: NSA step, main shape, H100, twenty-sixth session (docs/benchmarks.md), B = 1 64k 37.7 ->
# 32.8 us, B = 8 64k 86.1 -> 76.9, B = 1 8k 28.0 -> 25.1; bench_decode's sweep at B = 1 64k put 4 tiles per split
# (what max_splits 20 gives there) ahead of 2 (33.4-33.6 against 34.5-34.7 us) and 2 ahead of 4 at 8k. "big" (head
# dims > 128) keeps "keys": not timed.
# pdl: launch the kernel (and its combine / merge launch) with programmatic dependent launch (_chain_start; CUDA
# devices of compute capability >= 9 only, off elsewhere). Off by default: written in the twenty-seventh session,
# when no GPU could be had to time it (bench_decode.py times the step both ways: "serial" / "pdl").
# NSA_DECODE_TILES=path.json ({"attn"|"select": {"small"|"big": {...}}}) overrides.
DECODE_TILES: dict[str, dict[str, dict[str, float | str]]] = {
    "attn": {"small": dict(block_n=64, warps=8, stages=3, split_factor=1.0, max_splits=64, combine="kernel",
                           pdl=False),
             "big": dict(block_n=32, warps=4, stages=2, split_factor=1.0, max_splits=64, combine="kernel",
                         pdl=False)},
    "select": {"small": dict(warps=4, stages=2, tiles_per_split=2, max_splits=20, combine="kernel",
                             scores_from="attention", pdl=False),
               "big": dict(warps=4, stages=2, tiles_per_split=1, max_splits=128, combine="kernel",
                           scores_from="keys", pdl=False)},
}
INTERPRETER_TILES = {"attn": dict(block_n=16, warps=1, stages=1, split_factor=1.0, max_splits=8, combine="kernel",
                                  pdl=False),
                     "select": dict(warps=1, stages=1, tiles_per_split=1, max_splits=8, combine="kernel",
                                    scores_from="attention", pdl=False)}
if os.environ.get("NSA_DECODE_TILES"):
    with open(os.environ["NSA_DECODE_TILES"]) as _f:
        for _kernel, _sizes in json.load(_f).items():
            for _size, _cfg in _sizes.items():
                DECODE_TILES[_kernel][_size].update(_cfg)

COMBINE_MODES = ("fused", "kernel")
COMBINE_COLS = 16  # combine="kernel": output columns per combine program (1 / 8 of a 128-wide head per program)


def decode_tiles(kernel: str, big: bool, override: dict | None = None) -> dict:
    """The tile config of `kernel` ("attn" | "select") for this process (interpreter or GPU), with `override`."""
    cfg = dict(INTERPRETER_TILES[kernel] if INTERPRETED else DECODE_TILES[kernel]["big" if big else "small"])
    cfg.update(override or {})
    return cfg


def _target_programs(device: torch.device) -> int:
    """Programs that fill the GPU (two per multiprocessor); a small number under the interpreter."""
    if device.type != "cuda":
        return 64
    return 2 * sm_count(device)


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """A zeroed int32 buffer of >= n per-group counters; the fused combine leaves it zeroed after each launch.

    Kept per device across calls. During CUDA-graph capture a missing buffer is made fresh and not kept (its
    zero fill is captured with the graph, so every replay starts from zeros)."""
    buf = _COUNTERS.get(device)
    if buf is not None and buf.numel() >= n:
        return buf
    buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        _COUNTERS[device] = buf
    return buf


def _pdl(cfg: dict, device: torch.device) -> dict:
    """The launch arguments of programmatic dependent launch for a kernel with tiles cfg on `device`: the kernel's
    PDL constexpr (_chain_start) and Triton's launch_pdl, always the same value (a kernel launched early must
    wait). On where the tiles' `pdl` asks for it and the device has it (compute capability >= 9)."""
    on = bool(cfg.get("pdl")) and device.type == "cuda" and not INTERPRETED and device_properties(device).major >= 9
    return dict(PDL=on, launch_pdl=on)


@triton.jit
def _chain_start(PDL: tl.constexpr):
    """The first thing every decode kernel does. A decoding step is a chain of short launches, each reading what
    the one before wrote; with PDL (programmatic dependent launch, sm_90+), a kernel launched with launch_pdl may
    start as soon as every program of the one before has passed this point, so its launch and scheduling overlap
    that kernel's work. It then waits here until the kernel before has finished and its writes are visible
    (griddepcontrol.wait): nothing is read or written before, so the results are those of serial launches.
    Since every kernel waits before it lets the next one start, all kernels before the previous one have finished
    too."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


# ----------------------------------------------------------------------------------------------
# attention: compressed tokens, a key range (window) or selected blocks


@triton.jit
def _store_lse(m, l_sum, LSE, b, head, row_ok, Hq):
    """row_lse of one KV group's rows, stored at LSE[b, head]."""
    tl.store(LSE + b * Hq + head, row_lse(m, l_sum).to(LSE.dtype.element_ty), mask=row_ok)


@triton.jit
def _attn_finish(m_i, l_i, acc, OUT, LSE, b, head, row_ok, so_b, so_h, Hq,
                 DV: tl.constexpr, BLOCK_DV: tl.constexpr, WRITE_LSE: tl.constexpr):
    """Normalise and store one KV group's rows: o = acc / l (0 with no key), lse = (m + log2 l) * ln 2 (-inf)."""
    offs_dv = tl.arange(0, BLOCK_DV)
    o, _ = finish_rows(m_i, l_i, acc)
    tl.store(OUT + b * so_b + head[:, None] * so_h + offs_dv[None, :], o.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    if WRITE_LSE:
        _store_lse(m_i, l_i, LSE, b, head, row_ok, Hq)


@triton.jit
def _split_states(PM, PL, pid_bh, nsplit, G_PAD: tl.constexpr, S_PAD: tl.constexpr):
    """The nsplit partial softmax states of KV group pid_bh (PM, PL [B*Hkv, nsplit, G_PAD]), loaded at once as
    [S_PAD, G_PAD] tiles -> (their flat rows, which splits are real, each split's weight exp2(m_split - m) (0 for
    padding and for splits that saw no key), the merged row maximum m and sum l [G_PAD])."""
    s = tl.arange(0, S_PAD)
    s_ok = s < nsplit
    rows = (pid_bh.to(tl.int64) * nsplit + s)[:, None] * G_PAD + tl.arange(0, G_PAD)[None, :]  # [S_PAD, G_PAD]
    pm = tl.load(PM + rows, mask=s_ok[:, None], other=float("-inf"), cache_modifier=".cg")
    pl = tl.load(PL + rows, mask=s_ok[:, None], other=0.0, cache_modifier=".cg")
    m_tot = tl.max(pm, axis=0)
    m_use = tl.where(m_tot == float("-inf"), 0.0, m_tot)
    w = tl.exp2(pm - m_use[None, :])
    return rows, s_ok, w, m_tot, tl.sum(pl * w, axis=0)


@triton.jit
def _attn_combine(PM, PL, PACC, OUT, LSE, pid_bh, nsplit, Hkv, G, so_b, so_h,
                  DV: tl.constexpr, BLOCK_DV: tl.constexpr, G_PAD: tl.constexpr, WRITE_LSE: tl.constexpr,
                  ACC: tl.constexpr, S_PAD: tl.constexpr, DV_CHUNK: tl.constexpr, col0=0, SPAN: tl.constexpr = 0):
    """Merge the nsplit partial states of KV group pid_bh (PM, PL [B*Hkv, nsplit, G_PAD], PACC [..., BLOCK_DV])
    and store the group's output rows: columns col0 .. col0 + SPAN - 1 of them (SPAN 0: all; the lse goes with
    column 0). Every split's state is read in one vectorised load per tensor ([S_PAD, G_PAD] maxima and sums,
    [S_PAD, G_PAD, DV_CHUNK] chunks of the accumulators, the chunks unrolled), not split after split: a loop
    over the splits waits for each load in turn, and those round trips were most of a decode op's time. Loads
    bypass L1 (.cg): other programs wrote the partials."""
    b, kvh, head, row_ok = group_heads(pid_bh, Hkv, G, G_PAD)
    rows, s_ok, w, m_tot, l_tot = _split_states(PM, PL, pid_bh, nsplit, G_PAD, S_PAD)
    l_safe = tl.where(l_tot > 0, l_tot, 1.0)
    for c in tl.static_range(0, SPAN if SPAN > 0 else BLOCK_DV, DV_CHUNK):
        offs = col0 + c + tl.arange(0, DV_CHUNK)
        part = tl.load(PACC + rows[:, :, None] * BLOCK_DV + offs[None, None, :], mask=s_ok[:, None, None],
                       other=0.0, cache_modifier=".cg")
        o = tl.sum(part * w[:, :, None], axis=0) / l_safe[:, None]
        tl.store(OUT + b * so_b + head[:, None] * so_h + offs[None, :], o.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & (offs[None, :] < DV))
    if WRITE_LSE:
        if col0 == 0:
            _store_lse(m_tot, l_tot, LSE, b, head, row_ok, Hkv * G)


def combine_tiles(splits: int, g_pad: int, block_dv: int) -> tuple[int, int]:
    """(S_PAD, DV_CHUNK) of _attn_combine: all splits at once, accumulator chunks of <= 8192 floats."""
    s_pad = next_pow2(max(splits, 2))
    return s_pad, max(1, min(block_dv, 8192 // (s_pad * g_pad)))


@triton.jit
def _attn_split(
    pid_s, pid_bh, Q, sq_b, sq_h, Hkv, G, qk_scale,
    K, V, IDX, OUT, LSE, PM, PL, PACC, COUNT,
    sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_h, si_b, si_h,
    NSEL, t, lo, hi, keys_per_split, slots_per_split, nsplit, SEL, TP, lo_off, hi_off, hi_div, RAW, sr_g,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, G_PAD: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
    SELECTED: tl.constexpr, SPLIT: tl.constexpr, FUSED: tl.constexpr, WRITE_LSE: tl.constexpr,
    BLOCK_N: tl.constexpr, N_KT: tl.constexpr, NSEL_PAD: tl.constexpr, S_PAD: tl.constexpr, DV_CHUNK: tl.constexpr,
    T_DEV: tl.constexpr, SCORES: tl.constexpr,
):
    """Split pid_s of KV group pid_bh (= b * Hkv + kvh): the G query heads of that group of sequence b against
    one split of its keys. SELECTED: the keys s <= t of the blocks in slots [split * slots_per_split, ...) of idx
    (repeats and ids past t select nothing); else the key range [lo + split * keys_per_split, ...) clipped to
    hi. With one split it writes the output; with several, its partial state, and (FUSED) the last split of the
    group to finish combines them. SCORES (a key range only): also store the G heads' scores at RAW[pid_bh, g,
    key] (row stride sr_g; log2 units, unmasked). T_DEV: t is read from TP[0] on the device and lo = max(t +
    lo_off, 0), hi = max((t + hi_off) // hi_div, 0) (shapes and arguments then stay fixed from step to step: CUDA
    graphs)."""
    if T_DEV:
        t = tl.load(TP).to(tl.int32)
        lo = tl.maximum(t + lo_off, 0)
        hi = tl.maximum((t + hi_off) // hi_div, 0)  # (t + hi_off >= 0 wherever hi matters: C division is fine)
    b, kvh, head, row_ok = group_heads(pid_bh, Hkv, G, G_PAD)
    q = load_heads(Q, b, 0, head, row_ok, sq_b, 0, sq_h, DK, BLOCK_DK)
    k_base = K + b * sk_b + kvh.to(tl.int64) * sk_h
    v_base = V + b * sv_b + kvh.to(tl.int64) * sv_h

    m_i = tl.full([G_PAD], float("-inf"), ACC)
    l_i = tl.zeros([G_PAD], ACC)
    acc = tl.zeros([G_PAD, BLOCK_DV], ACC)
    if SELECTED:
        slots = tl.arange(0, NSEL_PAD)
        ids = tl.load(IDX + b * si_b + kvh.to(tl.int64) * si_h + slots, mask=slots < NSEL, other=-1)
        s0 = pid_s * slots_per_split
        s1 = tl.minimum(s0 + slots_per_split, NSEL)
        for it in range(s0 * N_KT, s1 * N_KT):
            kpos, k_ok, _ = _slot_keys(ids, slots, it // N_KT, it % N_KT, t, SEL, BLOCK_N)
            m_i, l_i, acc = attend_tile(q, k_base, v_base, kpos, k_ok, sk_t, sv_t, m_i, l_i, acc, qk_scale,
                                         DK, DV, BLOCK_DK, BLOCK_DV, ACC, PREC)
    else:
        k0 = lo + pid_s * keys_per_split
        k1 = tl.minimum(k0 + keys_per_split, hi)
        for start in range(k0, k1, BLOCK_N):
            kpos = start + tl.arange(0, BLOCK_N)
            if SCORES:  # keep the scores too, for the block selection that reads them (_select_split)
                k, v = load_kv_tile(k_base, v_base, kpos.to(tl.int64), kpos < k1, sk_t, sv_t, DK, DV, BLOCK_DK,
                                    BLOCK_DV)
                s = qk_scores(q, k, qk_scale, ACC, PREC)
                tl.store(RAW + (pid_bh.to(tl.int64) * G_PAD + tl.arange(0, G_PAD))[:, None] * sr_g + kpos[None, :],
                         s, mask=row_ok[:, None] & (kpos < k1)[None, :])
                m_i, l_i, acc = attend_scores(s, v, (kpos < k1)[None, :], m_i, l_i, acc, ACC, PREC)
            else:
                m_i, l_i, acc = attend_tile(q, k_base, v_base, kpos.to(tl.int64), kpos < k1, sk_t, sv_t,
                                             m_i, l_i, acc, qk_scale, DK, DV, BLOCK_DK, BLOCK_DV, ACC, PREC)

    if SPLIT:
        row = (pid_bh.to(tl.int64) * nsplit + pid_s) * G_PAD + tl.arange(0, G_PAD)
        tl.store(PM + row, m_i)
        tl.store(PL + row, l_i)
        tl.store(PACC + row[:, None] * BLOCK_DV + tl.arange(0, BLOCK_DV)[None, :], acc)
        if FUSED:
            tl.debug_barrier()  # every thread's partial is stored before the counter announces it
            done = tl.atomic_add(COUNT + pid_bh, 1, sem="acq_rel", scope="gpu")
            if done == nsplit - 1:  # the last split of this group to finish combines them all
                tl.debug_barrier()
                _attn_combine(PM, PL, PACC, OUT, LSE, pid_bh, nsplit, Hkv, G, so_b, so_h,
                              DV, BLOCK_DV, G_PAD, WRITE_LSE, ACC, S_PAD, DV_CHUNK)
                tl.atomic_xchg(COUNT + pid_bh, 0, sem="release", scope="gpu")
    else:
        _attn_finish(m_i, l_i, acc, OUT, LSE, b, head, row_ok, so_b, so_h, Hkv * G, DV, BLOCK_DV, WRITE_LSE)


@triton.jit
def _decode_attn_kernel(
    Q, sq_b, sq_h, Hkv, G, qk_scale,
    K, V, IDX, OUT, LSE, PM, PL, PACC, COUNT,
    sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_h, si_b, si_h,
    NSEL, t, lo, hi, keys_per_split, slots_per_split, nsplit, SEL, TP, lo_off, hi_off, hi_div, RAW, sr_g,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, G_PAD: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
    SELECTED: tl.constexpr, SPLIT: tl.constexpr, FUSED: tl.constexpr, WRITE_LSE: tl.constexpr,
    BLOCK_N: tl.constexpr, N_KT: tl.constexpr, NSEL_PAD: tl.constexpr, S_PAD: tl.constexpr, DV_CHUNK: tl.constexpr,
    T_DEV: tl.constexpr, SCORES: tl.constexpr, PDL: tl.constexpr,
):
    """One attention branch: program (split, b * Hkv + kvh) runs _attn_split."""
    _chain_start(PDL)
    _attn_split(tl.program_id(0), tl.program_id(1), Q, sq_b, sq_h, Hkv, G, qk_scale,
                K, V, IDX, OUT, LSE, PM, PL, PACC, COUNT,
                sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_h, si_b, si_h,
                NSEL, t, lo, hi, keys_per_split, slots_per_split, nsplit, SEL, TP, lo_off, hi_off, hi_div, RAW, sr_g,
                DK, DV, BLOCK_DK, BLOCK_DV, G_PAD, ACC, PREC,
                SELECTED, SPLIT, FUSED, WRITE_LSE, BLOCK_N, N_KT, NSEL_PAD, S_PAD, DV_CHUNK, T_DEV, SCORES)


@triton.jit
def _decode_attn_pair_kernel(
    Q, sq_b, sq_h, Hkv, G, qk_scale,
    K, V, IDX, OUT, LSE, PM, PL, PACC, COUNT,
    sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_h, si_b, si_h,
    NSEL, t, lo, hi, keys_per_split, slots_per_split, nsplit, SEL, TP, lo_off, hi_off, hi_div, RAW, sr_g,
    K2, V2, IDX2, OUT2, LSE2, PM2, PL2, PACC2, COUNT2,
    sk_b2, sk_t2, sk_h2, sv_b2, sv_t2, sv_h2, so_b2, so_h2, si_b2, si_h2,
    NSEL2, t2, lo2, hi2, keys_per_split2, slots_per_split2, nsplit2, SEL2, TP2, lo_off2, hi_off2, hi_div2, RAW2,
    sr_g2, DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, G_PAD: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
    SELECTED: tl.constexpr, SPLIT: tl.constexpr, FUSED: tl.constexpr, WRITE_LSE: tl.constexpr,
    BLOCK_N: tl.constexpr, N_KT: tl.constexpr, NSEL_PAD: tl.constexpr, S_PAD: tl.constexpr, DV_CHUNK: tl.constexpr,
    SELECTED2: tl.constexpr, SPLIT2: tl.constexpr, FUSED2: tl.constexpr, WRITE_LSE2: tl.constexpr,
    BLOCK_N2: tl.constexpr, N_KT2: tl.constexpr, NSEL_PAD2: tl.constexpr, S_PAD2: tl.constexpr,
    DV_CHUNK2: tl.constexpr, T_DEV: tl.constexpr, T_DEV2: tl.constexpr, SCORES: tl.constexpr,
    SCORES2: tl.constexpr, PDL: tl.constexpr,
):
    """Two independent attention branches of the same queries in one launch (selected and window attention of a
    decoding step): programs 0 .. nsplit-1 along axis 0 run the first branch, the next nsplit2 the second. A
    decoding step is a chain of latency-bound launches; this removes one link."""
    _chain_start(PDL)
    pid_s = tl.program_id(0)
    if pid_s < nsplit:
        _attn_split(pid_s, tl.program_id(1), Q, sq_b, sq_h, Hkv, G, qk_scale,
                    K, V, IDX, OUT, LSE, PM, PL, PACC, COUNT,
                    sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_h, si_b, si_h,
                    NSEL, t, lo, hi, keys_per_split, slots_per_split, nsplit, SEL, TP, lo_off, hi_off, hi_div, RAW,
                    sr_g, DK, DV, BLOCK_DK, BLOCK_DV, G_PAD, ACC, PREC,
                    SELECTED, SPLIT, FUSED, WRITE_LSE, BLOCK_N, N_KT, NSEL_PAD, S_PAD, DV_CHUNK, T_DEV, SCORES)
    else:
        _attn_split(pid_s - nsplit, tl.program_id(1), Q, sq_b, sq_h, Hkv, G, qk_scale,
                    K2, V2, IDX2, OUT2, LSE2, PM2, PL2, PACC2, COUNT2,
                    sk_b2, sk_t2, sk_h2, sv_b2, sv_t2, sv_h2, so_b2, so_h2, si_b2, si_h2,
                    NSEL2, t2, lo2, hi2, keys_per_split2, slots_per_split2, nsplit2, SEL2, TP2, lo_off2, hi_off2,
                    hi_div2, RAW2, sr_g2, DK, DV, BLOCK_DK, BLOCK_DV, G_PAD, ACC, PREC,
                    SELECTED2, SPLIT2, FUSED2, WRITE_LSE2, BLOCK_N2, N_KT2, NSEL_PAD2, S_PAD2, DV_CHUNK2, T_DEV2,
                    SCORES2)


@triton.jit
def _attn_combine_kernel(PM, PL, PACC, OUT, LSE, nsplit, PM2, PL2, PACC2, OUT2, nsplit2, Hkv, G, so_b, so_h,
                         so_b2, so_h2, DV: tl.constexpr, BLOCK_DV: tl.constexpr, G_PAD: tl.constexpr,
                         WRITE_LSE: tl.constexpr, ACC: tl.constexpr, S_PAD: tl.constexpr, DV_CHUNK: tl.constexpr,
                         S_PAD2: tl.constexpr, DV_CHUNK2: tl.constexpr, PDL: tl.constexpr):
    """combine="kernel": program (group, c, branch) merges columns c * DV_CHUNK .. of one KV group's splits of
    one branch, so that the combine's reads spread over BLOCK_DV / DV_CHUNK programs per group instead of one.
    Branch 1 (grid axis 2 = 1) is a second split branch of the same step (window attention beside selected
    attention), combined in the same launch; it writes no lse."""
    _chain_start(PDL)
    col = tl.program_id(1)
    if tl.program_id(2) == 0:
        if col * DV_CHUNK < BLOCK_DV:
            _attn_combine(PM, PL, PACC, OUT, LSE, tl.program_id(0), nsplit, Hkv, G, so_b, so_h,
                          DV, BLOCK_DV, G_PAD, WRITE_LSE, ACC, S_PAD, DV_CHUNK, col * DV_CHUNK, DV_CHUNK)
    else:
        if col * DV_CHUNK2 < BLOCK_DV:
            _attn_combine(PM2, PL2, PACC2, OUT2, OUT2, tl.program_id(0), nsplit2, Hkv, G, so_b2, so_h2,
                          DV, BLOCK_DV, G_PAD, False, ACC, S_PAD2, DV_CHUNK2, col * DV_CHUNK2, DV_CHUNK2)


def attn_plan(n_keys: int, bh: int, Dk: int, Dv: int, G: int, dtype: torch.dtype, device: torch.device,
              cfg: dict | None = None, select_size: int = 0) -> dict:
    """How _decode_attn_kernel splits one launch: {"splits", "per_split", "block_n", "cfg"}.

    n_keys: keys per KV group (a range), or with select_size > 0 the number of selected blocks (slots).
    A split reads n_keys / S keys and the combine reads S partial states ([G_PAD, Dv] floats each), so
    S ~ sqrt(key bytes / partial bytes) balances the two (times cfg split_factor); S is also capped so that
    bh * S stays near the programs that fill the GPU, and by max_splits. per_split: keys per split (a
    multiple of block_n), or slots per split."""
    bdk, bdv, g_pad = head_block(Dk), head_block(Dv), max(16, next_pow2(G))
    cfg = decode_tiles("attn", max(bdk, bdv) > 128, cfg)
    block_n = int(cfg["block_n"])
    if select_size:
        block_n = max(16, min(block_n, next_pow2(select_size)))  # >= 16: tl.dot's minimum
    keys = n_keys * select_size if select_size else n_keys
    key_bytes = (Dk + Dv) * torch.empty((), dtype=dtype).element_size()
    partial_bytes = g_pad * (bdv + 2) * torch.empty((), dtype=acc_dtype(dtype)).element_size()
    splits = round(cfg["split_factor"] * math.sqrt(max(keys, 0) * key_bytes / partial_bytes))
    splits = max(1, min(splits, max(1, _target_programs(device) // max(bh, 1)), int(cfg["max_splits"])))
    if select_size:
        per_split = math.ceil(n_keys / splits) if n_keys else 1
        splits = math.ceil(n_keys / per_split) if n_keys else 1
    else:
        per_split = math.ceil(math.ceil(max(n_keys, 1) / splits) / block_n) * block_n
        splits = max(1, math.ceil(n_keys / per_split))
    return dict(splits=splits, per_split=per_split, block_n=block_n, cfg=cfg)


def _combine_mode(combine: str | None, cfg: dict) -> str:
    """The combine mode of a launch: the call's, else its tiles' (cfg["combine"]), checked."""
    mode = cfg["combine"] if combine is None else combine
    if mode not in COMBINE_MODES:
        raise ValueError(f"decode combine={mode!r}: choose one of {COMBINE_MODES} (the call's combine argument or "
                         f"the decode tiles' combine entry, NSA_DECODE_TILES)")
    return mode


def _branch(q, k, v, *, lo: int, hi: int, idx=None, select_size: int = 1, write_lse: bool = False,
            cfg: dict | None = None, combine: str | None = None, counter_base: int = 0,
            pos: torch.Tensor | None = None, offsets: tuple[int, int, int] = (0, 0, 1),
            keep_scores: bool = False) -> dict:
    """One attention branch of _decode_attn_kernel / _decode_attn_pair_kernel: its output buffers, its split
    plan, and its kernel arguments ("args": the positional ones after the shared queries, "consts": its
    constexprs). Counters start at counter_base (two branches of one launch must not share them).
    With `pos` (the position on the device), [lo, hi) is the largest range the position can need (the split
    plan's) and the kernel derives its own from the position with offsets = (lo_off, hi_off, hi_div).
    keep_scores (a key range only): the kernel also stores the scores, in "scores" [B*Hkv, G_PAD, max(hi, 1)] of the
    accumulator dtype (_attn_split's SCORES)."""
    B, _, Hq, Dk = q.shape
    Hkv, Dv = k.shape[2], v.shape[3]
    G = Hq // Hkv
    dev = q.device
    o = torch.empty(B, 1, Hq, Dv, dtype=q.dtype, device=dev)
    lse = torch.empty(B, 1, Hq, dtype=torch.float32, device=dev) if write_lse else o
    if k.shape[1] == 0:  # nothing to attend: every load is masked, but pass real buffers
        k, v = q.new_zeros(B, 1, Hkv, Dk), q.new_zeros(B, 1, Hkv, Dv)
    bdv, g_pad = head_block(Dv), max(16, next_pow2(G))
    nsel = 1
    if idx is not None:
        idx = _clean_idx(idx)
        nsel = idx.shape[3]
    plan = attn_plan(nsel if idx is not None else hi - lo, B * Hkv, Dk, Dv, G, q.dtype, dev, cfg,
                     select_size=select_size if idx is not None else 0)
    splits, per_split, block_n = plan["splits"], plan["per_split"], plan["block_n"]
    combine = _combine_mode(combine, plan["cfg"])
    split = splits > 1
    acc_t = acc_dtype(q.dtype)
    if split:
        pm = torch.empty(B * Hkv, splits, g_pad, dtype=acc_t, device=dev)
        pl = torch.empty_like(pm)
        pacc = torch.empty(B * Hkv, splits, g_pad, bdv, dtype=acc_t, device=dev)
    else:
        pm = pl = pacc = o
    fused = split and combine == "fused"
    count = _counters(dev, counter_base + B * Hkv)[counter_base:] if fused else o
    si = (idx.stride(0), idx.stride(2)) if idx is not None else (0, 0)
    s_pad, dv_chunk = combine_tiles(splits, g_pad, bdv)
    raw = torch.empty(B * Hkv, g_pad, max(hi, 1), dtype=acc_t, device=dev) if keep_scores else None
    raw_args = (raw, raw.stride(1)) if raw is not None else (o, 0)
    args = [k, v, idx if idx is not None else o, o, lse, pm, pl, pacc, count,
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(2),
            *si, nsel, *((0, 0, 0) if pos is not None else (hi - 1, lo, hi)),  # t, lo, hi (from pos on the device)
            per_split if idx is None else 0, per_split if idx is not None else 0, splits, select_size,
            pos if pos is not None else o, *offsets, *raw_args]
    consts = dict(SELECTED=idx is not None, SPLIT=split, FUSED=fused, WRITE_LSE=write_lse, BLOCK_N=block_n,
                  N_KT=math.ceil(select_size / block_n), NSEL_PAD=next_pow2(max(nsel, 2)), S_PAD=s_pad,
                  DV_CHUNK=dv_chunk, T_DEV=pos is not None, SCORES=keep_scores)
    return dict(o=o, lse=lse if write_lse else None, plan=plan, args=args, consts=consts, partials=(pm, pl, pacc),
                Hkv=Hkv, G=G, scores=raw)


def _shared_args(q, k, v, scale: float) -> tuple[list, dict]:
    """The arguments both branches of a launch share: the queries, and the head-dim constexprs."""
    Hq, Dk = q.shape[2], q.shape[3]
    Hkv, Dv = k.shape[2], v.shape[3]
    args = [q, q.stride(0), q.stride(2), Hkv, Hq // Hkv, scale * LOG2E]
    consts = dict(DK=Dk, DV=Dv, BLOCK_DK=head_block(Dk), BLOCK_DV=head_block(Dv), G_PAD=max(16, next_pow2(Hq // Hkv)),
                  ACC=tl_acc(q.dtype), PREC=dot_precision(q.dtype))
    return args, consts


def _combine_separately(q, branches: list[dict], shared: dict) -> None:
    """combine="kernel": merge the partial states of one or two split branches of a step in one more launch,
    each group's columns spread over programs of at most COMBINE_COLS columns."""
    chunks = [min(br["consts"]["DV_CHUNK"], COMBINE_COLS) for br in branches]
    args = []
    for br in branches + branches[:1] * (2 - len(branches)):  # a lone branch fills the second's arguments
        args.append([*br["partials"][:3], br["o"], br["plan"]["splits"], br["o"].stride(0), br["o"].stride(2)])
    (pm, pl, pacc, o, n, sb, sh), (pm2, pl2, pacc2, o2, n2, sb2, sh2) = args
    first = branches[0]
    _attn_combine_kernel[(q.shape[0] * first["Hkv"], shared["BLOCK_DV"] // min(chunks), len(branches))](
        pm, pl, pacc, o, first["lse"] if first["lse"] is not None else o, n, pm2, pl2, pacc2, o2, n2,
        first["Hkv"], first["G"], sb, sh, sb2, sh2,
        DV=shared["DV"], BLOCK_DV=shared["BLOCK_DV"], G_PAD=shared["G_PAD"], WRITE_LSE=first["lse"] is not None,
        ACC=shared["ACC"], S_PAD=first["consts"]["S_PAD"], DV_CHUNK=chunks[0],
        S_PAD2=branches[-1]["consts"]["S_PAD"], DV_CHUNK2=chunks[-1], num_warps=4, num_stages=1,
        **_pdl(first["plan"]["cfg"], q.device),
    )


def _decode_attention(q, k, v, *, scale: float, lo: int, hi: int, idx=None, select_size: int = 1,
                      write_lse: bool = False, cfg: dict | None = None, combine: str | None = None,
                      pos: torch.Tensor | None = None, offsets: tuple[int, int, int] = (0, 0, 1)):
    """Launch _decode_attn_kernel: q [B,1,Hq,Dk] against keys [lo, hi) of k/v [B,S,Hkv,D] (or, with idx
    [B,1,Hkv,n], the keys <= hi - 1 of the selected blocks). Returns (o [B,1,Hq,Dv], lse [B,1,Hq] float32 or
    None). pos, offsets: see _branch."""
    q, k, v = bthd(q), bthd(k), bthd(v)
    br = _branch(q, k, v, lo=lo, hi=hi, idx=idx, select_size=select_size, write_lse=write_lse, cfg=cfg,
                 combine=combine, pos=pos, offsets=offsets)
    shared = _launch_branch(q, k, v, br, scale)
    if br["consts"]["SPLIT"] and not br["consts"]["FUSED"]:
        _combine_separately(q, [br], shared)
    return br["o"], br["lse"]


def _launch_branch(q, k, v, br: dict, scale: float) -> dict:
    """Launch _decode_attn_kernel for one _branch (its combine, if a second launch, is the caller's); returns the
    launch's shared constexprs."""
    args, consts = _shared_args(q, k, v, scale)
    cfg = br["plan"]["cfg"]
    _decode_attn_kernel[(br["plan"]["splits"], q.shape[0] * k.shape[2])](
        *args, *br["args"], **consts, **br["consts"], num_warps=int(cfg["warps"]), num_stages=int(cfg["stages"]),
        **_pdl(cfg, q.device))
    return consts


def _decode_selected_window(q, k_slc, v_slc, idx, k_win, v_win, *, scale: float, select_size: int, window: int,
                            t: int, cfg: dict | None = None, combine: str | None = None,
                            pos: torch.Tensor | None = None):
    """Selected and window attention of one decoding step in one launch (_decode_attn_pair_kernel) -> (o_slc,
    o_win), each [B,1,Hq,Dv]: the same results as the two separate launches. With `pos`, t is the largest
    position it may hold (see _branch)."""
    q, k_slc, v_slc, k_win, v_win = (bthd(x) for x in (q, k_slc, v_slc, k_win, v_win))
    n_groups = q.shape[0] * k_slc.shape[2]
    slc = _branch(q, k_slc, v_slc, lo=0, hi=t + 1, idx=idx, select_size=select_size, cfg=cfg, combine=combine,
                  pos=pos)
    win = _branch(q, k_win, v_win, lo=max(0, t - window + 1), hi=t + 1, cfg=cfg, combine=combine,
                  counter_base=n_groups, pos=pos, offsets=(1 - window, 1, 1))
    args, consts = _shared_args(q, k_slc, v_slc, scale)
    second = {f"{name}2": value for name, value in win["consts"].items()}
    cfg = slc["plan"]["cfg"]
    _decode_attn_pair_kernel[(slc["plan"]["splits"] + win["plan"]["splits"], n_groups)](
        *args, *slc["args"], *win["args"], **consts, **slc["consts"], **second,
        num_warps=int(cfg["warps"]), num_stages=int(cfg["stages"]), **_pdl(cfg, q.device))
    unmerged = [br for br in (slc, win) if br["consts"]["SPLIT"] and not br["consts"]["FUSED"]]
    if unmerged:
        _combine_separately(q, unmerged, consts)
    return slc["o"], win["o"]


# ----------------------------------------------------------------------------------------------
# block selection


@triton.jit
def _select_choose(keys, IDX, b, kvh, si_b, si_h, NSEL, NBT: tl.constexpr, LEVELS: tl.constexpr):
    """Write the NSEL largest of the candidate keys [R, NBT] (R = 2**LEVELS; keys distinct, negative = none)
    as ascending block ids, -1 padded, to idx[b, 0, kvh, :NSEL]. A tree of bitonic merges: each row sorted,
    then rows paired log2(R) times, keeping the NBT largest of each pair (max of one list and the other
    reversed, sorted again). It replaced NSEL rounds of a block-wide maximum (the lone merging program took 6.8
    us at 64k, Nsight Compute, H200): the selection op went 14.5 -> 11.9 us at 8k (4 splits) and stayed at
    about 18 us at 64k (35 splits, 6 levels), main shape, B = 1 (docs/benchmarks.md)."""
    MAX_ID: tl.constexpr = 2147483647
    keys = tl.sort(keys, dim=1, descending=True)
    two = tl.arange(0, 2)
    for level in tl.static_range(LEVELS):
        pair = tl.reshape(keys, [(1 << LEVELS) >> (level + 1), 2, NBT])
        first = tl.sum(tl.where((two == 0)[None, :, None], pair, 0), axis=1)
        second = tl.sum(tl.where((two == 1)[None, :, None], pair, 0), axis=1)
        keys = tl.sort(tl.maximum(first, tl.flip(second, 1)), dim=1, descending=True)
    top = tl.reshape(keys, [NBT])
    jj = tl.arange(0, NBT)
    ids = tl.where((jj < NSEL) & (top >= 0), MAX_ID - (top & MAX_ID), MAX_ID).to(tl.int32)
    ids = tl.sort(ids)  # ascending ids, unused slots (MAX_ID) last
    ids = tl.where(ids == MAX_ID, -1, ids)
    tl.store(IDX + b * si_b + kvh.to(tl.int64) * si_h + jj, ids, mask=jj < NSEL)


@triton.jit
def _select_merge(PKEY, IDX, pid_bh, nsplit, Hkv, si_b, si_h, NSEL, NBT: tl.constexpr, S_LOG2: tl.constexpr):
    """Merge the nsplit splits' candidates of KV group pid_bh (read as 2**S_LOG2 rows, the padding empty)."""
    b = (pid_bh // Hkv).to(tl.int64)
    kvh = pid_bh % Hkv
    srow = tl.arange(0, 1 << S_LOG2)
    jj = tl.arange(0, NBT)
    keys = tl.load(PKEY + (pid_bh.to(tl.int64) * nsplit + srow[:, None]) * NBT + jj[None, :],
                   mask=srow[:, None] < nsplit, other=-1, cache_modifier=".cg")
    _select_choose(keys, IDX, b, kvh, si_b, si_h, NSEL, NBT, S_LOG2)


@triton.jit
def _select_split(
    pid_s, pid_bh, Q, KC, LSE, IDX, PKEY, COUNT, RAW, PM, PL,
    sq_b, sq_h, sk_b, sk_t, sk_h, sl_b, sl_h, si_b, si_h, sr_g,
    Hkv, G, NSEL, TC, qk_scale, t, BS, STRIDE, SEL, NUM_INIT, NUM_LOCAL, blocks_per_split, nsplit, TP, cmp_nsplit,
    SPLIT: tl.constexpr, FUSED: tl.constexpr, MULTI_TILE: tl.constexpr, T_DEV: tl.constexpr,
    DK: tl.constexpr, BLOCK_DK: tl.constexpr, G_PAD: tl.constexpr, NBT: tl.constexpr, NBV: tl.constexpr,
    TPB: tl.constexpr, SPILL: tl.constexpr, C_PAD: tl.constexpr, S_LOG2: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, FROM_SCORES: tl.constexpr, LSE_FROM_STATES: tl.constexpr,
    CMP_S_PAD: tl.constexpr,
):
    """Split pid_s of KV group pid_bh (= b * Hkv + kvh): scores the selection blocks [split * blocks_per_split,
    ...) visible to the query at position t (j * l' <= t) and keeps its top-NBT candidate keys.

    A tile holds NBV blocks (NBV <= NBT) and the compressed tokens that overlap them: those whose own block
    (the one holding their first token) is in the tile (TPB = l'/d per block) and the SPILL = l/d - 1 tokens
    before, whose blocks spill into the tile's first block; C_PAD >= NBV * TPB + SPILL.
    The scores q.k_cmp: computed from the compressed keys KC, or (FROM_SCORES) read where compressed attention
    stored them (RAW, see _attn_split). The lse: read from LSE, or (LSE_FROM_STATES) merged from compressed
    attention's cmp_nsplit partial states PM/PL exactly as the combine that stores LSE merges them, so that this
    program need not wait for it (_select_decode_kernel can run both in one launch).
    T_DEV: t is read from TP[0] on the device, and TC (compressed tokens visible to it) derived from it."""
    MAX_ID: tl.constexpr = 2147483647
    if T_DEV:
        t = tl.load(TP).to(tl.int32)
        TC = tl.maximum((t + 1 - BS + STRIDE) // STRIDE, 0)
    b, kvh, head, row_ok = group_heads(pid_bh, Hkv, G, G_PAD)
    offs_dk = tl.arange(0, BLOCK_DK)
    if LSE_FROM_STATES:
        _, _, _, m_tot, l_tot = _split_states(PM, PL, pid_bh, cmp_nsplit, G_PAD, CMP_S_PAD)
        lse = row_lse(m_tot, l_tot).to(LSE.dtype.element_ty)  # the value the combine stores
    else:
        lse = tl.load(LSE + b * sl_b + head * sl_h, mask=row_ok, other=float("-inf"))
    lse2 = lse_log2(lse.to(ACC))
    if not FROM_SCORES:
        q = load_heads(Q, b, 0, head, row_ok, sq_b, 0, sq_h, DK, BLOCK_DK)
    k_base = KC + b * sk_b + kvh.to(tl.int64) * sk_h
    raw_rows = RAW + (pid_bh.to(tl.int64) * G_PAD + tl.arange(0, G_PAD)) * sr_g

    cur = t // SEL  # the block holding t; blocks 0 .. cur are visible
    j_begin = pid_s * blocks_per_split
    j_end = tl.minimum(j_begin + blocks_per_split, cur + 1)
    c = tl.arange(0, C_PAD)
    jj = tl.arange(0, NBT)
    top = tl.full([NBT], -1, tl.int64)
    for j0 in range(j_begin, j_end, NBV):
        i = j0 * TPB - SPILL + c
        i_ok = (c < NBV * TPB + SPILL) & (i >= 0) & (i < TC)
        if not FROM_SCORES:
            kc = tl.load(k_base + i.to(tl.int64)[:, None] * sk_t + offs_dk[None, :],
                         mask=i_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
            s = tl.dot(q, tl.trans(kc), out_dtype=ACC, input_precision=PREC) * qk_scale
        else:
            s = tl.load(raw_rows[:, None] + i[None, :], mask=row_ok[:, None] & i_ok[None, :], other=0.0,
                        cache_modifier=".cg")
        p = tl.where(row_ok[:, None] & i_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        pg = tl.sum(p, axis=0)  # [C_PAD]: importance summed over the group's heads
        blk = j0 + jj
        blk_ok = (jj < NBV) & (blk < j_end)
        tok_lo = i * STRIDE
        blk_lo = blk * SEL
        ov = tl.minimum(tok_lo[:, None] + BS, blk_lo[None, :] + SEL) - tl.maximum(tok_lo[:, None], blk_lo[None, :])
        w = tl.where(i_ok[:, None] & (ov > 0), ov, 0).to(ACC) / STRIDE  # [C_PAD, NBT] overlap weights
        score = tl.sum(pg[:, None] * w, axis=0)  # [NBT]
        forced = (blk < NUM_INIT) | (blk > cur - NUM_LOCAL)
        bits = score.to(tl.float32).to(tl.int32, bitcast=True)
        bits = tl.where(forced, 0x7F800000, bits).to(tl.int64)  # +inf: forced blocks always win
        key = tl.where(blk_ok, (bits << 31) | (MAX_ID - blk).to(tl.int64), -1)
        if MULTI_TILE:  # merge into the running top-NBT: the NBT largest of A and B (both sorted) are max(A, B[::-1])
            top = tl.sort(tl.maximum(top, tl.sort(key)), descending=True)
        else:
            top = key

    if SPLIT:
        tl.store(PKEY + (pid_bh.to(tl.int64) * nsplit + pid_s) * NBT + jj, top)
        if FUSED:
            tl.debug_barrier()
            done = tl.atomic_add(COUNT + pid_bh, 1, sem="acq_rel", scope="gpu")
            if done == nsplit - 1:
                tl.debug_barrier()
                _select_merge(PKEY, IDX, pid_bh, nsplit, Hkv, si_b, si_h, NSEL, NBT, S_LOG2)
                tl.atomic_xchg(COUNT + pid_bh, 0, sem="release", scope="gpu")
    else:
        _select_choose(top[None, :], IDX, b, kvh, si_b, si_h, NSEL, NBT, 0)


@triton.jit
def _select_decode_kernel(
    Q, KC, LSE, IDX, PKEY, COUNT, RAW, PM, PL, PACC, OUT,
    sq_b, sq_h, sk_b, sk_t, sk_h, sl_b, sl_h, si_b, si_h, sr_g, so_b, so_h,
    Hkv, G, NSEL, TC, qk_scale, t, BS, STRIDE, SEL, NUM_INIT, NUM_LOCAL, blocks_per_split, nsplit, TP, cmp_nsplit,
    SPLIT: tl.constexpr, FUSED: tl.constexpr, MULTI_TILE: tl.constexpr, T_DEV: tl.constexpr,
    DK: tl.constexpr, BLOCK_DK: tl.constexpr, G_PAD: tl.constexpr, NBT: tl.constexpr, NBV: tl.constexpr,
    TPB: tl.constexpr, SPILL: tl.constexpr, C_PAD: tl.constexpr, S_LOG2: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, FROM_SCORES: tl.constexpr, LSE_FROM_STATES: tl.constexpr,
    CMP_S_PAD: tl.constexpr, N_COMBINE: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    DV_CHUNK: tl.constexpr, PDL: tl.constexpr,
):
    """Program (c, b * Hkv + kvh) runs selection split c - N_COMBINE (_select_split). With N_COMBINE > 0 (the
    selection beside the compressed attention whose lse it merges itself, LSE_FROM_STATES), programs c <
    N_COMBINE instead run that attention's combine, columns c * DV_CHUNK .. of the group's cmp_nsplit splits
    (PM, PL, PACC -> OUT and LSE): the selection need not wait for it."""
    _chain_start(PDL)
    c = tl.program_id(0)
    if N_COMBINE > 0:  # (a constexpr test first: without combine programs, no combine code is built)
        if c < N_COMBINE:
            _attn_combine(PM, PL, PACC, OUT, LSE, tl.program_id(1), cmp_nsplit, Hkv, G, so_b, so_h, DV, BLOCK_DV,
                          G_PAD, True, ACC, CMP_S_PAD, DV_CHUNK, c * DV_CHUNK, DV_CHUNK)
            return
    _select_split(c - N_COMBINE, tl.program_id(1), Q, KC, LSE, IDX, PKEY, COUNT, RAW, PM, PL,
                  sq_b, sq_h, sk_b, sk_t, sk_h, sl_b, sl_h, si_b, si_h, sr_g,
                  Hkv, G, NSEL, TC, qk_scale, t, BS, STRIDE, SEL, NUM_INIT, NUM_LOCAL, blocks_per_split, nsplit,
                  TP, cmp_nsplit, SPLIT, FUSED, MULTI_TILE, T_DEV, DK, BLOCK_DK, G_PAD, NBT, NBV, TPB, SPILL,
                  C_PAD, S_LOG2, ACC, PREC, FROM_SCORES, LSE_FROM_STATES, CMP_S_PAD)


@triton.jit
def _select_merge_kernel(PKEY, IDX, nsplit, Hkv, si_b, si_h, NSEL, NBT: tl.constexpr, S_LOG2: tl.constexpr,
                         PDL: tl.constexpr):
    _chain_start(PDL)
    _select_merge(PKEY, IDX, tl.program_id(0), nsplit, Hkv, si_b, si_h, NSEL, NBT, S_LOG2)


def _select_tiles(num_select: int, tpb: int, spill: int) -> tuple[int, int, int]:
    """(NBT, NBV, C_PAD): candidates kept (num_select rounded up to a power of two), blocks per tile and
    compressed tokens per tile (a power of two >= NBV * TPB + SPILL, and >= 16 for tl.dot)."""
    nbt = max(2, next_pow2(num_select))
    c_pad = max(16, next_pow2(nbt * tpb))
    while (c_pad - spill) // tpb < 1:
        c_pad *= 2
    return nbt, min(nbt, (c_pad - spill) // tpb), c_pad


def select_plan(t: int, *, block_size: int, stride: int, select_size: int, num_select: int, big: bool = False,
                cfg: dict | None = None) -> dict:
    """How _select_decode_kernel splits the visible blocks of position t: tiles of nbv blocks (nbt candidates
    kept, c_pad compressed tokens loaded), tiles_per_split tiles per program (more when the tiles exceed
    max_splits programs per KV group), and the resulting number of splits."""
    cfg = decode_tiles("select", big, cfg)
    nbt, nbv, c_pad = _select_tiles(num_select, select_size // stride, block_size // stride - 1)
    n_tiles = math.ceil((t // select_size + 1) / nbv)  # tiles of visible blocks
    tiles_per_split = max(int(cfg["tiles_per_split"]), math.ceil(n_tiles / int(cfg["max_splits"])))
    return dict(nbt=nbt, nbv=nbv, c_pad=c_pad, tiles_per_split=tiles_per_split,
                splits=math.ceil(n_tiles / tiles_per_split), cfg=cfg)


def _decode_select(q, k_cmp, lse, *, block_size: int, stride: int, select_size: int, num_select: int,
                   num_init: int, num_local: int, scale: float, t: int, cfg: dict | None = None,
                   combine: str | None = None, pos: torch.Tensor | None = None, raw: torch.Tensor | None = None,
                   cmp: dict | None = None) -> torch.Tensor:
    """Launch _select_decode_kernel for the query at position t, or with `pos` at the position held there on the
    device (t: the largest it may hold, which sizes the split plan; k_cmp then is the whole buffer).
    With `raw` (the scores compressed attention stored, _branch's "scores"), the selection reads them instead of
    scoring k_cmp. With `cmp` too (that compressed attention's _branch, split, its combine not yet run; lse its
    lse buffer), the combine runs in the same launch and the selection merges the lse from the partial states
    itself."""
    q, k_cmp = bthd(q), bthd(k_cmp)
    B, _, Hq, Dk = q.shape
    Tc, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    G = Hq // Hkv
    dev = q.device
    idx = torch.empty(B, 1, Hkv, num_select, dtype=torch.int32, device=dev)
    if Tc == 0:
        k_cmp = q.new_zeros(B, 1, Hkv, Dk)
    bdk = head_block(Dk)
    plan = select_plan(t, block_size=block_size, stride=stride, select_size=select_size, num_select=num_select,
                       big=bdk > 128, cfg=cfg)
    splits, cfg = plan["splits"], plan["cfg"]
    combine = _combine_mode(combine, cfg)
    nbt, nbv, c_pad, tiles_per_split = plan["nbt"], plan["nbv"], plan["c_pad"], plan["tiles_per_split"]
    tpb, spill = select_size // stride, block_size // stride - 1
    split = splits > 1
    fused = split and combine == "fused"
    pkey = torch.empty(B * Hkv, splits, nbt, dtype=torch.int64, device=dev) if split else idx
    count = _counters(dev, B * Hkv) if fused else idx
    s_log2 = (next_pow2(splits) - 1).bit_length()  # the merge reads 2**s_log2 rows of candidates
    pm, pl, pacc = cmp["partials"] if cmp is not None else (idx, idx, idx)
    o = cmp["o"] if cmp is not None else q
    args = [q, k_cmp, lse, idx, pkey, count, raw if raw is not None else idx, pm, pl, pacc, o,
            q.stride(0), q.stride(2), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2), lse.stride(0), lse.stride(2),
            idx.stride(0), idx.stride(2), raw.stride(1) if raw is not None else 0, o.stride(0), o.stride(2),
            Hkv, G, num_select, 0 if pos is not None else Tc, scale * LOG2E, 0 if pos is not None else t, block_size,
            stride, select_size, num_init, num_local, tiles_per_split * nbv, splits, pos if pos is not None else idx,
            cmp["plan"]["splits"] if cmp is not None else 1]
    consts = dict(SPLIT=split, FUSED=fused, MULTI_TILE=tiles_per_split > 1, T_DEV=pos is not None,
                  DK=Dk, BLOCK_DK=bdk, G_PAD=max(16, next_pow2(G)), NBT=nbt, NBV=nbv, TPB=tpb, SPILL=spill,
                  C_PAD=c_pad, S_LOG2=s_log2, ACC=tl_acc(q.dtype), PREC=dot_precision(q.dtype),
                  FROM_SCORES=raw is not None, LSE_FROM_STATES=cmp is not None,
                  CMP_S_PAD=cmp["consts"]["S_PAD"] if cmp is not None else 2)
    bdv = head_block(o.shape[3])
    chunk = min(cmp["consts"]["DV_CHUNK"], COMBINE_COLS) if cmp is not None else bdv
    n_combine = bdv // chunk if cmp is not None else 0  # programs of compressed attention's combine
    _select_decode_kernel[(n_combine + splits, B * Hkv)](
        *args, **consts, N_COMBINE=n_combine, DV=o.shape[3], BLOCK_DV=bdv, DV_CHUNK=chunk,
        num_warps=int(cfg["warps"]), num_stages=int(cfg["stages"]), **_pdl(cfg, dev))
    if split and not fused:
        _select_merge_kernel[(B * Hkv,)](pkey, idx, splits, Hkv, idx.stride(0), idx.stride(2), num_select,
                                         NBT=nbt, S_LOG2=s_log2, num_warps=int(cfg["warps"]), **_pdl(cfg, dev))
    return idx


SCORES_FROM = ("keys", "attention")


def _reads_scores(q: torch.Tensor, select_cfg: dict | None) -> bool:
    """Whether the selection for queries like q reads the scores compressed attention stored: the selection tiles'
    `scores_from` (with select_cfg), checked: "attention"; "keys", the selection scores the compressed keys itself
    (see compressed_attention_and_select)."""
    mode = decode_tiles("select", head_block(q.shape[-1]) > 128, select_cfg)["scores_from"]
    if mode not in SCORES_FROM:
        raise ValueError(f"decode scores_from={mode!r}: choose one of {SCORES_FROM} (the selection tiles' "
                         f"scores_from entry, NSA_DECODE_TILES)")
    return mode == "attention"


def _decode_compressed_select(q, k_cmp, v_cmp, *, scale: float, block_size: int, stride: int, select_size: int,
                              num_select: int, num_init: int, num_local: int, t: int, hi: int,
                              cfg: dict | None = None, select_cfg: dict | None = None, combine: str | None = None,
                              pos: torch.Tensor | None = None, offsets: tuple[int, int, int] = (0, 0, 1)):
    """Compressed attention over compressed tokens [0, hi) storing its scores, then the block selection reading
    them (scores_from="attention") -> (o [B,1,Hq,Dv], lse [B,1,Hq], idx [B,1,Hkv,n]). When compressed attention
    splits and combines in a second launch, that launch also runs the selection's splits. pos, offsets: see
    _branch."""
    q, k_cmp, v_cmp = bthd(q), bthd(k_cmp), bthd(v_cmp)
    br = _branch(q, k_cmp, v_cmp, lo=0, hi=hi, write_lse=True, cfg=cfg, combine=combine, pos=pos, offsets=offsets,
                 keep_scores=True)
    _launch_branch(q, k_cmp, v_cmp, br, scale)
    late = br["consts"]["SPLIT"] and not br["consts"]["FUSED"]  # its combine is still to run
    if pos is None:  # the selection scores the first k_cmp.shape[1] tokens: exactly those the attention stored
        k_cmp = k_cmp[:, :hi]
    idx = _decode_select(q, k_cmp, br["lse"], block_size=block_size, stride=stride, select_size=select_size,
                         num_select=num_select, num_init=num_init, num_local=num_local, scale=scale, t=t,
                         cfg=select_cfg, combine=combine, pos=pos, raw=br["scores"], cmp=br if late else None)
    return br["o"], br["lse"], idx


# ----------------------------------------------------------------------------------------------
# the public signatures (T == 1; inputs already validated by kernels/__init__.py)


def _use_chunked(*tensors: torch.Tensor) -> bool:
    """True when the decode kernels cannot serve the call: a gradient is needed (they have no backward), or the
    tensors are on a device where the kernels cannot run in this process (see runs_triton)."""
    return not runs_triton(tensors[0]) or (torch.is_grad_enabled() and any(x.requires_grad for x in tensors))


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, block_size: int,
                         stride: int, scale: float | None = None, q_start: int = 0, cfg: dict | None = None,
                         combine: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of kernels.compressed_attention: q [B,1,Hq,Dk] at position q_start against its
    visible compressed tokens k_cmp/v_cmp [B,Tc,Hkv,D] (all Tc = num_compressed_tokens(q_start + 1) of them)."""
    if _use_chunked(q, k_cmp, v_cmp):
        return chunked.compressed_attention(q, k_cmp, v_cmp, block_size=block_size, stride=stride, scale=scale,
                                            q_start=q_start)
    n_vis = num_compressed_tokens(q_start + 1, block_size, stride)
    o, lse = _decode_attention(q, k_cmp, v_cmp, scale=resolve_scale(scale, q.shape[-1]), lo=0, hi=n_vis,
                               write_lse=True, cfg=cfg, combine=combine)
    return o, lse


def compressed_attention_and_select(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, block_size: int,
                                    stride: int, select_size: int, num_select: int, num_init: int = 1,
                                    num_local: int = 2, scale: float | None = None, q_start: int = 0,
                                    cfg: dict | None = None, select_cfg: dict | None = None,
                                    combine: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step of compressed_attention and of select_blocks on its lse -> (o, lse, idx), as the selection
    tiles' scores_from says: "keys", the two ops; "attention", _decode_compressed_select. cfg / select_cfg: each
    kernel's tile overrides; combine: both kernels'. Where the kernels cannot serve the call, the two ops take
    their PyTorch path (each decides it)."""
    sel = dict(select_size=select_size, num_select=num_select, num_init=num_init, num_local=num_local)
    if _use_chunked(q, k_cmp, v_cmp) or not _reads_scores(q, select_cfg):
        o, lse = compressed_attention(q, k_cmp, v_cmp, block_size=block_size, stride=stride, scale=scale,
                                      q_start=q_start, cfg=cfg, combine=combine)
        return o, lse, select_blocks(q, k_cmp, lse, block_size=block_size, stride=stride, **sel, scale=scale,
                                     q_start=q_start, cfg=select_cfg, combine=combine)
    return _decode_compressed_select(q, k_cmp, v_cmp, scale=resolve_scale(scale, q.shape[-1]), block_size=block_size,
                                     stride=stride, **sel, t=q_start,
                                     hi=num_compressed_tokens(q_start + 1, block_size, stride), cfg=cfg,
                                     select_cfg=select_cfg, combine=combine)


@torch.no_grad()
def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, *, block_size: int, stride: int,
                  select_size: int, num_select: int, num_init: int = 1, num_local: int = 2,
                  scale: float | None = None, q_start: int = 0, cfg: dict | None = None,
                  combine: str | None = None) -> torch.Tensor:
    """One decoding step of kernels.select_blocks -> int32 idx [B,1,Hkv,num_select] (ascending ids, -1 last)."""
    if _use_chunked(q):
        return chunked.select_blocks(q, k_cmp, lse, block_size=block_size, stride=stride, select_size=select_size,
                                     num_select=num_select, num_init=num_init, num_local=num_local, scale=scale,
                                     q_start=q_start)
    return _decode_select(q, k_cmp, lse, block_size=block_size, stride=stride, select_size=select_size,
                          num_select=num_select, num_init=num_init, num_local=num_local,
                          scale=resolve_scale(scale, q.shape[-1]), t=q_start, cfg=cfg, combine=combine)


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *, select_size: int,
                       scale: float | None = None, q_start: int = 0, cfg: dict | None = None,
                       combine: str | None = None) -> torch.Tensor:
    """One decoding step of kernels.selected_attention: q [B,1,Hq,Dk] at q_start, k/v [B,q_start+1,Hkv,D]."""
    if _use_chunked(q, k, v):
        return chunked.selected_attention(q, k, v, idx, select_size=select_size, scale=scale, q_start=q_start)
    return _decode_attention(q, k, v, scale=resolve_scale(scale, q.shape[-1]), lo=0, hi=q_start + 1, idx=idx,
                             select_size=select_size, cfg=cfg, combine=combine)[0]


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, scale: float | None = None,
                     q_start: int = 0, cfg: dict | None = None, combine: str | None = None) -> torch.Tensor:
    """One decoding step of kernels.window_attention: keys q_start - window < s <= q_start."""
    if _use_chunked(q, k, v):
        return chunked.window_attention(q, k, v, window=window, scale=scale, q_start=q_start)
    return _decode_attention(q, k, v, scale=resolve_scale(scale, q.shape[-1]), lo=max(0, q_start - window + 1),
                             hi=q_start + 1, cfg=cfg, combine=combine)[0]


def selected_and_window_attention(q: torch.Tensor, k_slc: torch.Tensor, v_slc: torch.Tensor, idx: torch.Tensor,
                                  k_win: torch.Tensor, v_win: torch.Tensor, *, select_size: int, window: int,
                                  scale: float | None = None, q_start: int = 0, cfg: dict | None = None,
                                  combine: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of selected_attention(q, k_slc, v_slc, idx) and window_attention(q, k_win, v_win) in
    one launch -> (o_slc, o_win)."""
    if _use_chunked(q, k_slc, v_slc, k_win, v_win):
        return (chunked.selected_attention(q, k_slc, v_slc, idx, select_size=select_size, scale=scale,
                                           q_start=q_start),
                chunked.window_attention(q, k_win, v_win, window=window, scale=scale, q_start=q_start))
    return _decode_selected_window(q, k_slc, v_slc, idx, k_win, v_win, scale=resolve_scale(scale, q.shape[-1]),
                                   select_size=select_size, window=window, t=q_start, cfg=cfg, combine=combine)


# ----------------------------------------------------------------------------------------------
# the same step with the position on the device: fixed shapes and arguments from step to step, so that a
# decoding step can be captured once in a CUDA graph and replayed. The caches are passed whole (their
# preallocated length); `pos` is a one-element integer tensor on the queries' device holding the position,
# which must not exceed max_pos (not checked: that would need a host synchronisation). Triton kernels only.


def _check_position(op: str, pos: torch.Tensor, q: torch.Tensor, rows: int, needed: int, what: str) -> None:
    """pos is a one-element integer tensor on q's device, and a cache buffer of `rows` rows holds the `needed`
    ones that max_pos can reach."""
    if pos.numel() != 1 or pos.dtype not in (torch.int32, torch.int64) or pos.device != q.device:
        raise ValueError(f"{op}: the position must be a one-element int32/int64 tensor on {q.device}, got "
                         f"{tuple(pos.shape)} {pos.dtype} on {pos.device}")
    if rows < needed:
        raise ValueError(f"{op}: {what} has {rows} rows but max_pos needs {needed}: lower max_pos or grow the cache")


def compressed_attention_at(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, pos: torch.Tensor, *,
                            block_size: int, stride: int, max_pos: int, scale: float | None = None,
                            cfg: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """compressed_attention for the query at position pos (device) -> (o [B,1,Hq,Dv], lse [B,1,Hq]): k_cmp/v_cmp
    [B, >= num_compressed_tokens(max_pos + 1), Hkv, D] buffers, of which the first visible ones are read."""
    n_max = num_compressed_tokens(max_pos + 1, block_size, stride)
    _check_position("compressed_attention_at", pos, q, k_cmp.shape[1], n_max, "k_cmp")
    return _decode_attention(q, k_cmp, v_cmp, scale=resolve_scale(scale, q.shape[-1]), lo=0, hi=n_max,
                             write_lse=True, cfg=cfg, pos=pos, offsets=_compressed_offsets(max_pos, block_size, stride))


def _compressed_offsets(max_pos: int, block_size: int, stride: int) -> tuple[int, int, int]:
    """_branch's offsets for compressed attention at a device position t <= max_pos: lo = 0, hi = the compressed
    tokens visible at t, (t + 1 - block_size + stride) // stride."""
    return -(max_pos + 1), stride + 1 - block_size, stride


def compressed_attention_and_select_at(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, pos: torch.Tensor,
                                       *, block_size: int, stride: int, select_size: int, num_select: int,
                                       max_pos: int, num_init: int = 1, num_local: int = 2,
                                       scale: float | None = None, cfg: dict | None = None,
                                       select_cfg: dict | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """compressed_attention_and_select for the query at position pos (device) -> (o, lse, idx); k_cmp/v_cmp as in
    compressed_attention_at."""
    sel = dict(block_size=block_size, stride=stride, select_size=select_size, num_select=num_select,
               num_init=num_init, num_local=num_local)
    if not _reads_scores(q, select_cfg):
        o, lse = compressed_attention_at(q, k_cmp, v_cmp, pos, block_size=block_size, stride=stride, max_pos=max_pos,
                                         scale=scale, cfg=cfg)
        return o, lse, select_blocks_at(q, k_cmp, lse, pos, **sel, max_pos=max_pos, scale=scale, cfg=select_cfg)
    n_max = num_compressed_tokens(max_pos + 1, block_size, stride)
    _check_position("compressed_attention_and_select_at", pos, q, k_cmp.shape[1], n_max, "k_cmp")
    return _decode_compressed_select(q, k_cmp, v_cmp, scale=resolve_scale(scale, q.shape[-1]), **sel, t=max_pos,
                                     hi=n_max, cfg=cfg, select_cfg=select_cfg, pos=pos,
                                     offsets=_compressed_offsets(max_pos, block_size, stride))


@torch.no_grad()
def select_blocks_at(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, pos: torch.Tensor, *,
                     block_size: int, stride: int, select_size: int, num_select: int, max_pos: int,
                     num_init: int = 1, num_local: int = 2, scale: float | None = None,
                     cfg: dict | None = None) -> torch.Tensor:
    """select_blocks for the query at position pos (device) -> int32 idx [B,1,Hkv,num_select]; k_cmp as in
    compressed_attention_at."""
    _check_position("select_blocks_at", pos, q, k_cmp.shape[1], num_compressed_tokens(max_pos + 1, block_size, stride),
                    "k_cmp")
    return _decode_select(q, k_cmp, lse, block_size=block_size, stride=stride, select_size=select_size,
                          num_select=num_select, num_init=num_init, num_local=num_local,
                          scale=resolve_scale(scale, q.shape[-1]), t=max_pos, cfg=cfg, pos=pos)


def selected_and_window_attention_at(q: torch.Tensor, k_slc: torch.Tensor, v_slc: torch.Tensor, idx: torch.Tensor,
                                     k_win: torch.Tensor, v_win: torch.Tensor, pos: torch.Tensor, *,
                                     select_size: int, window: int, max_pos: int, scale: float | None = None,
                                     cfg: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """selected_and_window_attention for the query at position pos (device) -> (o_slc, o_win): k/v [B, >= max_pos
    + 1, Hkv, D] cache buffers, of which the keys up to the position are read."""
    _check_position("selected_and_window_attention_at", pos, q, min(k_slc.shape[1], k_win.shape[1]), max_pos + 1,
                    "the key cache")
    return _decode_selected_window(q, k_slc, v_slc, idx, k_win, v_win, scale=resolve_scale(scale, q.shape[-1]),
                                   select_size=select_size, window=window, t=max_pos, cfg=cfg, pos=pos)


# op name -> decode function with the op's public signature (kernels/__init__.py dispatches T == 1 calls here)
TRITON_DECODE_OPS: dict[str, Callable] = {
    "compressed_attention": compressed_attention,
    "select_blocks": select_blocks,
    "compressed_attention_and_select": compressed_attention_and_select,
    "selected_attention": selected_attention,
    "window_attention": window_attention,
    "selected_and_window_attention": selected_and_window_attention,
}
