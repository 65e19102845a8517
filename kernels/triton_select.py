"""Triton kernel for NSA's block selection: importance scores -> block scores -> top-n, fused.

One program owns NPOS consecutive query positions x the G heads of one KV group. It walks the
selection blocks visible to its positions in tiles of NBT blocks (NBT = num_select rounded up to a
power of two), and for each tile:
1. recomputes the compression branch's probabilities p = exp(q . k_cmp * scale - lse) for the
   compressed tokens whose own block lies in the tile (never storing the [T, T/d] matrix);
2. sums p over the G heads of the group (a reshape [NPOS, G, C] -> sum over G);
3. spreads each token over the blocks it overlaps with the weights |token ∩ block| / d (NSA.md,
   selection step 3; a token overlaps its own block and at most the next one because l <= l': the
   part falling in the next tile's first block is carried over in `carry`). When l'/d is a power of
   two (ALIGNED) this is a reshape [NPOS, NBT, l'/d] and two small weighted sums, else a general
   [NPOS, C, NBT] weighted sum. With the tile option wdot (num_select > 8), steps 2-3 swap: every head's
   p [NPOS*G, C] times the overlap weights [C, NBT] on the tensor cores, then the sum over the G heads on NBT
   columns instead of C (the sum over heads took most of the loop's shuffles: docs/benchmarks.md);
4. merges the tile's candidates into a running top-NBT list kept in registers. (Collecting several tiles'
   candidates before merging, the former tile option merge_tiles, lost to merging every tile once the
   merges got cheap: 3.34-3.84 against 3.16 ms at 32k, H200, docs/benchmarks.md.)
Tiles wholly before the diagonal (every compressed token visible to the program's first position) skip the
visibility mask of step 1; they run in a loop of their own, before the loop over the rest.

Top-n in registers: each candidate becomes one int64 sort key, (priority bits << 31) | (MAXID - id).
Priorities are non-negative float32 scores (whose bit patterns order like the floats), +inf for forced
blocks; MAXID - id makes the lower id win a tie, exactly like the reference's stable descending sort.
Invisible blocks get NO_KEY, below the running list's initial placeholders -1 .. -NBT, so every key in the
list stays distinct. A merge is skipped when no candidate beats its row's smallest kept key (i.i.d. scores
bring about NBT / k to the k-th tile); otherwise both lists are sorted and the NBT largest of A ∪ B taken as
max(A[i], B[NBT-1-i]) (a bitonic half-cleaner). (Letting a few entering candidates replace the smallest key one
at a time instead was faster while the keys had a costly layout, and 13% slower since: docs/benchmarks.md.)
Finally the chosen ids are written in ascending order with -1 padding, as the reference returns them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.triton_common import (
    LOG2E,
    bthd,
    dot_precision,
    gpu_tiles,
    group_rows,
    head_block,
    load_rows,
    lse_log2,
    next_pow2,
    row_block,
    tl_acc,
    tma_descriptor,
)

NO_KEY: tl.constexpr = tl.constexpr(-(2**40))  # the key of an invisible block: below the initial keys -1 .. -NBT


@triton.jit
def _tile_scores(q, lse2, pos, row_ok, k_src, sk_t, b, kvh, jb0, carry, w, w_next, TC, qk_scale, BS, STRIDE, SEL,
                 DK: tl.constexpr, BLOCK_DK: tl.constexpr, G_PAD: tl.constexpr, NPOS: tl.constexpr,
                 NBT: tl.constexpr, TPB: tl.constexpr, C_PAD: tl.constexpr, ALIGNED: tl.constexpr,
                 ACC: tl.constexpr, PREC: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr, WDOT: tl.constexpr):
    """Block scores [NPOS, NBT] of the tile of blocks jb0 .. jb0 + NBT - 1 (steps 1-3 of the module docstring),
    and the carry into the next tile. MASKED=False: every compressed token of the tile is visible to every
    position (the tiles before the diagonal), so no mask is computed (rows without a query have q = 0 and
    lse2 = +inf, hence p = 0). k_src: the compressed keys of (b, kvh) as a pointer, or with TMA a tensor descriptor
    over all of them (its C_PAD-row box may reach into the next tile: those tokens get weight 0 below). WDOT: w
    [C_PAD, NBT] and w_next [C_PAD] are _overlap_weights; unused otherwise."""
    offs_dk = tl.arange(0, BLOCK_DK)
    c = tl.arange(0, C_PAD)
    jj = tl.arange(0, NBT)
    i = jb0 * TPB + c
    i_ok = (c < NBT * TPB) & (i < TC)
    if TMA:
        kc = row_block(k_src, b, jb0 * TPB, kvh, C_PAD, BLOCK_DK)
    else:
        kc = tl.load(k_src + i.to(tl.int64)[:, None] * sk_t + offs_dk[None, :],
                     mask=i_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
    s = tl.dot(q, tl.trans(kc), out_dtype=ACC, input_precision=PREC)
    if MASKED:
        vis = (i[None, :] * STRIDE + BS - 1 <= pos[:, None]) & i_ok[None, :] & row_ok[:, None]
        p = tl.where(vis, tl.exp2(s * qk_scale - lse2[:, None]), 0.0)
    else:
        p = tl.exp2(s * qk_scale - lse2[:, None])
    pg = tl.sum(tl.reshape(p, [NPOS, G_PAD, C_PAD]), axis=1)  # [NPOS, C_PAD]: summed over the group (unused if WDOT)

    if WDOT:
        # each head's block scores as one product, then the sum over the group's heads on NBT columns
        if ACC == tl.float32:  # float16 operands: p in [0, 1] and the weights (multiples of 1/d) keep tf32's
            # 11 bits, and a 16-bit p stays in registers for the product (a float32 one goes through shared memory)
            sw = tl.dot(p.to(tl.float16), w.to(tl.float16), out_dtype=ACC)  # [NPOS * G_PAD, NBT]
        else:
            sw = tl.dot(p, w, out_dtype=ACC, input_precision=PREC)
        score = tl.sum(tl.reshape(sw, [NPOS, G_PAD, NBT]), axis=1) + tl.where(jj[None, :] == 0, carry[:, None], 0.0)
        # an identity gather: it gives score the 2D layout the keys' steps are cheap in (without it, the layout
        # derived from the product's made the selection loop 2.2x longer: sass_report.py select)
        score = tl.gather(score, tl.broadcast_to(jj[None, :], [NPOS, NBT]), 1)
        carry = tl.sum(tl.reshape(tl.sum(p * w_next[None, :], axis=1), [NPOS, G_PAD]), axis=1)
    elif ALIGNED:
        # C_PAD = NBT * TPB tokens, TPB per block: token r of a block starts r*d into it, so its weight
        # on its own block and on the next depends on r only; the spill moves one block to the right
        pg3 = tl.reshape(pg, [NPOS, NBT, TPB])
        r = tl.arange(0, TPB)
        w_own = (tl.minimum(BS, SEL - r * STRIDE)).to(ACC) / STRIDE
        w_spill = (tl.maximum(r * STRIDE + BS - SEL, 0)).to(ACC) / STRIDE
        own = tl.sum(pg3 * w_own[None, None, :], axis=2)  # [NPOS, NBT]
        spill = tl.sum(pg3 * w_spill[None, None, :], axis=2)  # [NPOS, NBT], belongs to block + 1
        # block k spills into k + 1: a gather keeps score in the 2D layout of `own` (a [NPOS, NBT, NBT] shift
        # product gave it a 3D-derived layout that made every later step on the keys several times dearer)
        prev = tl.gather(spill, tl.broadcast_to(tl.maximum(jj - 1, 0)[None, :], [NPOS, NBT]), 1)
        score = own + tl.where(jj[None, :] == 0, carry[:, None], prev)
        carry = tl.sum(tl.where(jj[None, :] == NBT - 1, spill, 0.0), axis=1)
    else:
        # general sizes: overlap weights of each token with the tile's blocks and the next tile's first
        tok_lo = i * STRIDE
        tok_hi = tok_lo + BS
        blk_lo = (jb0 + jj) * SEL
        ov = tl.minimum(tok_hi[:, None], blk_lo[None, :] + SEL) - tl.maximum(tok_lo[:, None], blk_lo[None, :])
        w = tl.where(i_ok[:, None] & (ov > 0), ov, 0).to(ACC) / STRIDE  # [C_PAD, NBT]
        nxt_lo = (jb0 + NBT) * SEL
        ov_next = tl.minimum(tok_hi, nxt_lo + SEL) - tl.maximum(tok_lo, nxt_lo)
        w_next = tl.where(i_ok & (ov_next > 0), ov_next, 0).to(ACC) / STRIDE  # [C_PAD]
        score = tl.sum(pg[:, :, None] * w[None, :, :], axis=1)  # [NPOS, NBT]
        score = score + tl.where(jj[None, :] == 0, carry[:, None], 0.0)
        carry = tl.sum(pg * w_next[None, :], axis=1)
    return score, carry


@triton.jit
def _overlap_weights(BS, STRIDE, SEL, NBT: tl.constexpr, TPB: tl.constexpr, C_PAD: tl.constexpr, ACC: tl.constexpr):
    """The weights |token ∩ block| / d of a tile's compressed tokens: w [C_PAD, NBT] on the tile's blocks, w_next
    [C_PAD] on the next tile's first. The same for every tile: token c starts c*d into the tile (d divides l')."""
    c = tl.arange(0, C_PAD)
    jj = tl.arange(0, NBT)
    tok_lo = c * STRIDE
    in_tile = c < NBT * TPB  # the padding past the tile's tokens belongs to the next tile
    ov = tl.minimum(tok_lo[:, None] + BS, (jj[None, :] + 1) * SEL) - tl.maximum(tok_lo[:, None], jj[None, :] * SEL)
    w = tl.where(in_tile[:, None] & (ov > 0), ov, 0).to(ACC) / STRIDE
    ov_next = tl.minimum(tok_lo + BS, (NBT + 1) * SEL) - tl.maximum(tok_lo, NBT * SEL)
    w_next = tl.where(in_tile & (ov_next > 0), ov_next, 0).to(ACC) / STRIDE
    return w, w_next


@triton.jit
def _merge_top(top, cand, NBT: tl.constexpr):
    """The NBT largest keys of top and cand, both [NPOS, NBT] (top's keys distinct, in any order; keys of
    invisible blocks below every key of top), in any order; skipped when no candidate beats its row's smallest
    kept key."""
    if tl.max(tl.sum((cand > tl.min(top, axis=1)[:, None]).to(tl.int32), axis=1)) > 0:
        # bitonic half-cleaner: with top descending and cand ascending, the NBT largest are the pairwise maxima
        top = tl.maximum(tl.sort(top, dim=1, descending=True), tl.sort(cand, dim=1))
    return top


@triton.jit
def _select_tile(q, lse2, pos, row_ok, k_src, sk_t, b, kvh, jb0, cur, top, carry, w, w_next, TC, qk_scale, BS,
                 STRIDE, SEL, NUM_INIT, NUM_LOCAL, DK: tl.constexpr, BLOCK_DK: tl.constexpr, G_PAD: tl.constexpr,
                 NPOS: tl.constexpr, NBT: tl.constexpr, TPB: tl.constexpr, C_PAD: tl.constexpr, ALIGNED: tl.constexpr,
                 ACC: tl.constexpr, PREC: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr, WDOT: tl.constexpr):
    """One tile of blocks: its scores become candidate keys, merged into the running top -> (top, carry)."""
    MAX_ID: tl.constexpr = 2147483647  # ids are packed below 2**31
    score, carry = _tile_scores(q, lse2, pos, row_ok, k_src, sk_t, b, kvh, jb0, carry, w, w_next, TC, qk_scale, BS,
                                STRIDE, SEL, DK, BLOCK_DK, G_PAD, NPOS, NBT, TPB, C_PAD, ALIGNED, ACC, PREC, MASKED,
                                TMA, WDOT)
    jj = tl.arange(0, NBT)
    blk = jb0 + jj
    visible = blk[None, :] <= cur[:, None]
    forced = visible & ((blk[None, :] < NUM_INIT) | (blk[None, :] > cur[:, None] - NUM_LOCAL))
    bits = score.to(tl.float32).to(tl.int32, bitcast=True)
    bits = tl.where(forced, 0x7F800000, bits).to(tl.int64)  # +inf: forced blocks always win
    key = tl.where(visible, (bits << 31) | (MAX_ID - blk[None, :]).to(tl.int64), NO_KEY)
    return _merge_top(top, key, NBT), carry


@triton.jit
def _select_kernel(
    Q, KC, LSE, IDX,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sl_b, sl_t, sl_h, si_b, si_t, si_h,
    T, TC, Hkv, G, NSEL, qk_scale, BS, STRIDE, SEL, NUM_INIT, NUM_LOCAL,
    DK: tl.constexpr, BLOCK_DK: tl.constexpr, G_PAD: tl.constexpr, NPOS: tl.constexpr,
    NBT: tl.constexpr, TPB: tl.constexpr, C_PAD: tl.constexpr, ALIGNED: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, TMA: tl.constexpr = False, WDOT: tl.constexpr = False,
):
    """TMA: KC is a tensor descriptor over the compressed keys (row_block), not a pointer. WDOT: the head sum after
    a product with the overlap weights (module docstring; needs NBT >= 16, a dot's smallest width)."""
    MAX_ID: tl.constexpr = 2147483647  # ids are packed below 2**31

    # query rows: NPOS positions x G_PAD heads
    b, kvh, t0, pos, head, row_ok = group_rows(tl.program_id(0), tl.program_id(1), T, Hkv, G, NPOS, G_PAD)
    pos64 = pos.to(tl.int64)
    q = load_rows(Q, b, pos64, head, row_ok, sq_b, sq_t, sq_h, DK, BLOCK_DK)
    lse2 = lse_log2(tl.load(LSE + b * sl_b + pos64 * sl_t + head * sl_h, mask=row_ok, other=float("-inf")).to(ACC))

    # per-position view (one row per query position)
    prow = tl.arange(0, NPOS)
    ppos = t0 + prow
    cur = ppos // SEL  # the block holding the position
    jj = tl.arange(0, NBT)

    t_last = tl.minimum(t0 + NPOS, T) - 1
    n_blocks = t_last // SEL + 1  # blocks visible to the tile's last position
    # tiles whose compressed tokens the first position already sees in full need no mask
    n_vis0 = tl.where(t0 + 1 >= BS, (t0 + 1 - BS) // STRIDE + 1, 0)
    full_end = tl.minimum((n_vis0 // (NBT * TPB)) * NBT, n_blocks)
    k_src = KC if TMA else KC + b * sk_b + kvh.to(tl.int64) * sk_h
    top = -1 - tl.zeros([NPOS, NBT], tl.int64) - jj[None, :]  # distinct placeholders, below every real key
    carry = tl.zeros([NPOS], ACC)
    w, w_next = _overlap_weights(BS, STRIDE, SEL, NBT, TPB, C_PAD, ACC)  # used only if WDOT
    # the tiles before the diagonal, then the rest: two loops, not a branch in one (Triton 3.6's software
    # pipeliner fails on a loop with a branch around the dot)
    for jb0 in range(0, full_end, NBT):
        top, carry = _select_tile(q, lse2, pos, row_ok, k_src, sk_t, b, kvh, jb0, cur, top, carry, w, w_next, TC,
                                  qk_scale, BS, STRIDE, SEL, NUM_INIT, NUM_LOCAL, DK, BLOCK_DK, G_PAD, NPOS, NBT, TPB,
                                  C_PAD, ALIGNED, ACC, PREC, False, TMA, WDOT)
    for jb0 in range(full_end, n_blocks, NBT):
        top, carry = _select_tile(q, lse2, pos, row_ok, k_src, sk_t, b, kvh, jb0, cur, top, carry, w, w_next, TC,
                                  qk_scale, BS, STRIDE, SEL, NUM_INIT, NUM_LOCAL, DK, BLOCK_DK, G_PAD, NPOS, NBT, TPB,
                                  C_PAD, ALIGNED, ACC, PREC, True, TMA, WDOT)

    top = tl.sort(top, dim=1, descending=True)  # the first NSEL are the chosen ones
    chosen = (jj[None, :] < NSEL) & (top >= 0)
    ids = tl.where(chosen, MAX_ID - (top & MAX_ID), MAX_ID).to(tl.int32)
    ids = tl.sort(ids, dim=1)  # ascending ids, unused slots (MAX_ID) last
    ids = tl.where(ids == MAX_ID, -1, ids)
    out = IDX + b * si_b + ppos.to(tl.int64)[:, None] * si_t + kvh.to(tl.int64) * si_h + jj[None, :]
    tl.store(out, ids, mask=(ppos[:, None] < T) & (jj[None, :] < NSEL))


def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, *, block_size: int, stride: int,
                  select_size: int, num_select: int, num_init: int, num_local: int, scale: float) -> torch.Tensor:
    """q [B,T,Hq,Dk], k_cmp [B,Tc,Hkv,Dk], lse [B,T,Hq] -> int32 idx [B,T,Hkv,num_select] (kernels.reference
    select_blocks: ascending ids, -1 for unused slots). Inputs are assumed valid (the public op checks them)."""
    q, k_cmp = bthd(q), bthd(k_cmp)
    B, T, Hq, Dk = q.shape
    Tc, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    G = Hq // Hkv
    idx = torch.empty(B, T, Hkv, num_select, dtype=torch.int32, device=q.device)
    if Tc == 0:  # no compressed token: every load is masked, but pass a real buffer
        k_cmp = q.new_zeros(B, 1, Hkv, Dk)
    nbt = max(2, next_pow2(num_select))
    tpb = select_size // stride  # compressed tokens per selection block (stride | select_size)
    c_pad = max(16, next_pow2(nbt * tpb))
    g_pad = next_pow2(G)
    bdk = head_block(Dk)
    # positions per program: enough rows for a 16-row dot, few enough to keep [NPOS, C, NBT] small
    cfg = gpu_tiles("select", bdk)
    npos = max(1, cfg["rows"] // g_pad)
    while npos * c_pad * nbt > 16384 and npos * g_pad > 16:
        npos //= 2
    npos = max(npos, math.ceil(16 / g_pad))
    npos = next_pow2(npos)
    grid = (triton.cdiv(T, npos), B * Hkv)
    kc_desc = tma_descriptor(k_cmp, [1, c_pad, 1, bdk]) if cfg.get("tma") else None
    _select_kernel[grid](
        q, k_cmp if kc_desc is None else kc_desc, lse, idx,
        q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2), idx.stride(0), idx.stride(1), idx.stride(2),
        T, Tc, Hkv, G, num_select, scale * LOG2E, block_size, stride, select_size, num_init, num_local,
        DK=Dk, BLOCK_DK=bdk, G_PAD=g_pad, NPOS=npos, NBT=nbt, TPB=tpb, C_PAD=c_pad, ALIGNED=c_pad == nbt * tpb,
        ACC=tl_acc(q.dtype), PREC=dot_precision(q.dtype), TMA=kc_desc is not None,
        WDOT=bool(cfg.get("wdot")) and nbt >= 16,
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    return idx

