"""Triton kernels for NSA's selected-block attention, forward and backward.

Forward and dQ follow the paper's group-centric design: one program owns one query position and all G
heads of one KV group (G rows, padded to >= 16 for the tensor cores), and walks that group's selected
blocks in tiles of BLOCK_N keys, so each selected KV block is loaded once for the G heads. Block ids
that are negative, past the position, or repeated in the same row select nothing (the reference's rule).

With `share` = P > 1 ("selected_fwd"/"selected_dq" tiles), forward and dQ instead give each program P
consecutive positions x G heads and the union of their selected blocks (built with torch ops: sort the
tile's P*n ids, drop repeats): each block of the union is loaded once for the tile and attended by the rows
whose position chose it (a per-row mask). Neighbouring queries of a trained model choose mostly the same
blocks (eval.py's `slc_blocks_shared4`: 4 positions load 41% of their separate loads), so this trades
masked MMA work for fewer K/V loads and M = P*G rows per MMA instead of G. On random selections (what
the benchmarks feed) the union is nearly P*n blocks, so at G >= 16 it only adds work; at G < 16 the P >= 16/G
positions fill rows the one-position kernel pads with empty heads, so it never does more MMA work there.

dK/dV use an inverted index instead of atomics on every (query, block) pair: the launcher sorts the
(query, block) pairs by (batch, KV head, block) with torch ops, giving each block the list of query
positions that selected it. One program then owns one selection block and a segment of at most
SEG_LEN of those queries (NPOS positions x G heads per step), accumulates dK/dV of the block in
registers, and adds them into float32 buffers with one atomic add per element and segment. Splitting
long lists into segments balances the load: block 0 is chosen by every query (it is forced), while a
typical block is chosen by a few hundred. The grid is sized by an upper bound on the number of
segments, so building the index needs no device-to-host synchronisation; spare programs exit at once.
The other design, float32 atomics on every (query, key tile) pair, is the "selected_dkdv" tiles' option
`atomic`: the dQ programs then add their dK/dV contributions themselves and no index is built.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_banded import row_delta
from kernels.triton_common import (
    INTERPRETED,
    LOG2E,
    acc_dtype,
    add_key_grads,
    add_key_grads_t,
    attend_kv,
    attend_tile,
    attend_tile_rows,
    bthd,
    dot_precision,
    dq_softmax_stats,
    dq_tile_rows,
    finish_rows,
    gpu_tiles,
    group_heads,
    group_rows,
    head_block,
    kv_block,
    kv_descriptors,
    load_heads,
    load_kv_tile,
    load_rows,
    load_softmax_stats,
    next_pow2,
    score_grads,
    softmax_probs,
    tl_acc,
)


@triton.jit
def _slot_keys(ids, slots, s, kt, t, SEL, BLOCK_N: tl.constexpr):
    """Key positions [BLOCK_N] of tile kt of the block in slot s, which of them query t sees (none when the slot's id
    is negative, past t, or repeats an earlier slot; ids [NSEL_PAD] holds the row's ids), and the tile's first key
    position as an int32 scalar (block 0's where the slot sees nothing), for block (TMA) loads."""
    j = tl.sum(tl.where(slots == s, ids, 0), axis=0)
    repeat = tl.sum(((slots < s) & (ids == j)).to(tl.int32), axis=0)
    ok = (j >= 0) & (j.to(tl.int64) * SEL <= t) & (repeat == 0)
    koff = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    kpos = tl.where(ok, j, 0).to(tl.int64) * SEL + koff
    n_keys = tl.where(ok, SEL, 0)  # (not `ok & vector`: the interpreter turns a scalar bool & vector into int)
    return kpos, (koff < n_keys) & (kpos <= t), tl.where(ok, j, 0) * SEL + kt * BLOCK_N


@triton.jit
def _selected_fwd_kernel(
    Q, K, V, IDX, OUT, LSE,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h, si_b, si_t, si_h,
    T, Hkv, G, NSEL, qk_scale, SEL,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    G_PAD: tl.constexpr, NSEL_PAD: tl.constexpr, BLOCK_N: tl.constexpr, N_KT: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr = False,
):
    """Selected attention of one position's G heads. TMA: K and V are tensor descriptors (kv_block), not pointers."""
    t = tl.program_id(0)
    b, kvh, head, row_ok = group_heads(tl.program_id(1), Hkv, G, G_PAD)
    t64 = t.to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = load_heads(Q, b, t64, head, row_ok, sq_b, sq_t, sq_h, DK, BLOCK_DK)
    idx_row = IDX + b * si_b + t64 * si_t + kvh.to(tl.int64) * si_h
    slots = tl.arange(0, NSEL_PAD)
    ids = tl.load(idx_row + slots, mask=slots < NSEL, other=-1)
    if not TMA:
        k_base = K + b * sk_b + kvh.to(tl.int64) * sk_h
        v_base = V + b * sv_b + kvh.to(tl.int64) * sv_h

    m_i = tl.full([G_PAD], float("-inf"), ACC)
    l_i = tl.zeros([G_PAD], ACC)
    acc = tl.zeros([G_PAD, BLOCK_DV], ACC)
    # one flat loop over (slot, key tile), branch-free (invalid slots just mask every key), so that
    # Triton can software-pipeline the K/V loads across selected blocks
    for it in range(NSEL * N_KT):
        kt = it % N_KT
        kpos, k_ok, start = _slot_keys(ids, slots, it // N_KT, kt, t, SEL, BLOCK_N)
        if TMA:
            k, v = kv_block(K, V, b, start, kvh, BLOCK_N, BLOCK_DK, BLOCK_DV)
            m_i, l_i, acc = attend_kv(q, k, v, k_ok[None, :], m_i, l_i, acc, qk_scale, ACC, PREC)
        else:
            m_i, l_i, acc = attend_tile(q, k_base, v_base, kpos, k_ok, sk_t, sv_t, m_i, l_i, acc, qk_scale,
                                        DK, DV, BLOCK_DK, BLOCK_DV, ACC, PREC)

    o, lse = finish_rows(m_i, l_i, acc)
    tl.store(OUT + b * so_b + t64 * so_t + head[:, None] * so_h + offs_dv[None, :], o.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    Hq = Hkv * G
    tl.store(LSE + (b * T + t64) * Hq + head, lse, mask=row_ok)


@triton.jit
def _selected_bwd_dq_kernel(
    Q, K, V, IDX, DO, LSE, DELTA, DQ, DK_ACC, DV_ACC, OUT,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sdo_b, sdo_t, sdo_h, sdq_b, sdq_t, sdq_h,
    si_b, si_t, si_h, so_b, so_t, so_h,
    T, Hkv, G, NSEL, qk_scale, sm_scale, SEL,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    G_PAD: tl.constexpr, NSEL_PAD: tl.constexpr, BLOCK_N: tl.constexpr, N_KT: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, ATOMIC_DKDV: tl.constexpr, TMA: tl.constexpr = False,
    FUSED_DELTA: tl.constexpr = False,
):
    """dQ of one position's G heads. With ATOMIC_DKDV also its dK/dV contributions, added with float32 atomics
    into DK_ACC [B, T, Hkv, DK] / DV_ACC [B, T, Hkv, DV] (contiguous): the alternative to the inverted index.
    TMA: K and V are tensor descriptors (kv_block), not pointers. FUSED_DELTA: the rows' delta computed here from
    OUT and stored to DELTA, which the dK/dV kernel then reads."""
    t = tl.program_id(0)
    b, kvh, head, row_ok = group_heads(tl.program_id(1), Hkv, G, G_PAD)
    t64 = t.to(tl.int64)
    Hq = Hkv * G
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = load_heads(Q, b, t64, head, row_ok, sq_b, sq_t, sq_h, DK, BLOCK_DK)
    do = load_heads(DO, b, t64, head, row_ok, sdo_b, sdo_t, sdo_h, DV, BLOCK_DV)
    o = load_heads(OUT, b, t64, head, row_ok, so_b, so_t, so_h, DV, BLOCK_DV)  # read only if FUSED_DELTA
    lse2, delta = dq_softmax_stats(LSE, DELTA, DELTA, o, do, (b * T + t64) * Hq + head, row_ok, FUSED_DELTA, False)
    idx_row = IDX + b * si_b + t64 * si_t + kvh.to(tl.int64) * si_h
    slots = tl.arange(0, NSEL_PAD)
    ids = tl.load(idx_row + slots, mask=slots < NSEL, other=-1)
    if not TMA:
        k_base = K + b * sk_b + kvh.to(tl.int64) * sk_h
        v_base = V + b * sv_b + kvh.to(tl.int64) * sv_h

    dq = tl.zeros([G_PAD, BLOCK_DK], ACC)
    for it in range(NSEL * N_KT):
        kt = it % N_KT
        kpos, k_ok, start = _slot_keys(ids, slots, it // N_KT, kt, t, SEL, BLOCK_N)
        if TMA:
            k, v = kv_block(K, V, b, start, kvh, BLOCK_N, BLOCK_DK, BLOCK_DV)
        else:
            k, v = load_kv_tile(k_base, v_base, kpos, k_ok, sk_t, sv_t, DK, DV, BLOCK_DK, BLOCK_DV)
        p = softmax_probs(q, k, lse2, k_ok[None, :], qk_scale, ACC, PREC)
        ds = score_grads(p, do, v, delta, ACC, PREC)
        dq += tl.dot(ds.to(k.dtype), k, out_dtype=ACC, input_precision=PREC)
        if ATOMIC_DKDV:
            out_row = (b * T + kpos) * Hkv + kvh
            tl.atomic_add(DK_ACC + out_row[:, None] * DK + offs_dk[None, :],
                          tl.dot(tl.trans(ds.to(q.dtype)), q, out_dtype=ACC, input_precision=PREC) * sm_scale,
                          mask=k_ok[:, None] & (offs_dk[None, :] < DK))
            tl.atomic_add(DV_ACC + out_row[:, None] * DV + offs_dv[None, :],
                          tl.dot(tl.trans(p.to(do.dtype)), do, out_dtype=ACC, input_precision=PREC),
                          mask=k_ok[:, None] & (offs_dv[None, :] < DV))
    dq = dq * sm_scale
    tl.store(DQ + b * sdq_b + t64 * sdq_t + head[:, None] * sdq_h + offs_dk[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dk[None, :] < DK))


@triton.jit
def _selected_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, POS, BUCKET_OFF, ITEM_BUCKET, ITEM_SEG, DK_ACC, DV_ACC,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sdo_b, sdo_t, sdo_h,
    T, Hkv, G, NB, qk_scale, sm_scale, SEL, SEG_LEN,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    G_PAD: tl.constexpr, NPOS: tl.constexpr, BLOCK_N: tl.constexpr, N_KT: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, KEY_MAJOR: tl.constexpr = False,
):
    """dK/dV of one selection block from one segment of the queries that selected it (atomically added
    into the float32 buffers DK_ACC [B, T, Hkv, DK], DV_ACC [B, T, Hkv, DV], contiguous). KEY_MAJOR: the products
    key-major (add_key_grads_t), which Triton can pipeline without a race."""
    BM: tl.constexpr = NPOS * G_PAD
    item = tl.program_id(0)
    bucket = tl.load(ITEM_BUCKET + item)
    if bucket >= 0:
        seg = tl.load(ITEM_SEG + item)
        beg = tl.load(BUCKET_OFF + bucket) + seg * SEG_LEN
        end = tl.minimum(beg + SEG_LEN, tl.load(BUCKET_OFF + bucket + 1))
        bh = bucket // NB
        j = (bucket % NB).to(tl.int64)
        b = (bh // Hkv).to(tl.int64)
        kvh = (bh % Hkv).to(tl.int64)
        Hq = Hkv * G
        rows = tl.arange(0, BM)
        g = rows % G_PAD
        head = kvh * G + g
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_dv = tl.arange(0, BLOCK_DV)
        offs_n = tl.arange(0, BLOCK_N)
        for kt in range(N_KT):
            koff = kt * BLOCK_N + offs_n
            kpos = j * SEL + koff
            k_ok = (koff < SEL) & (kpos < T)
            k = tl.load(K + b * sk_b + kvh * sk_h + kpos[:, None] * sk_t + offs_dk[None, :],
                        mask=k_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
            v = tl.load(V + b * sv_b + kvh * sv_h + kpos[:, None] * sv_t + offs_dv[None, :],
                        mask=k_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
            dk = tl.zeros([BLOCK_N, BLOCK_DK], ACC)
            dv = tl.zeros([BLOCK_N, BLOCK_DV], ACC)
            for p0 in range(beg, end, NPOS):
                slot = p0 + rows // G_PAD
                row_ok = (slot < end) & (g < G)
                pos = tl.load(POS + slot, mask=row_ok, other=0).to(tl.int64)
                q = load_rows(Q, b, pos, head, row_ok, sq_b, sq_t, sq_h, DK, BLOCK_DK)
                do = load_rows(DO, b, pos, head, row_ok, sdo_b, sdo_t, sdo_h, DV, BLOCK_DV)
                lse2, delta = load_softmax_stats(LSE, DELTA, (b * T + pos) * Hq + head, row_ok)
                if KEY_MAJOR:
                    vis_t = k_ok[:, None] & row_ok[None, :] & (kpos[:, None] <= pos[None, :])
                    dk, dv = add_key_grads_t(q, do, lse2, delta, k, v, vis_t, dk, dv, qk_scale, ACC, PREC)
                else:
                    vis = row_ok[:, None] & k_ok[None, :] & (kpos[None, :] <= pos[:, None])
                    dk, dv = add_key_grads(q, do, lse2, delta, k, v, vis, dk, dv, qk_scale, ACC, PREC)
            out_row = (b * T + kpos) * Hkv + kvh
            tl.atomic_add(DK_ACC + out_row[:, None] * DK + offs_dk[None, :], dk * sm_scale,
                          mask=k_ok[:, None] & (offs_dk[None, :] < DK))
            tl.atomic_add(DV_ACC + out_row[:, None] * DV + offs_dv[None, :], dv,
                          mask=k_ok[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _tile_queries(Q, pid_m, pid_bh, T, Hkv, G, sq_b, sq_t, sq_h, DK: tl.constexpr, BLOCK_DK: tl.constexpr,
                  P: tl.constexpr, G_PAD: tl.constexpr):
    """A shared tile's rows, position-major (row = p * G_PAD + g): batch, KV head, first position, int64
    positions and heads [P*G_PAD], which rows are real, and their queries [P*G_PAD, BLOCK_DK]."""
    b, kvh, t0, pos, head, row_ok = group_rows(pid_m, pid_bh, T, Hkv, G, P, G_PAD)
    pos = pos.to(tl.int64)
    return b, kvh, t0, pos, head, row_ok, load_rows(Q, b, pos, head, row_ok, sq_b, sq_t, sq_h, DK, BLOCK_DK)


@triton.jit
def _tile_selection(IDX, UNION, COUNT, b, kvh, pid_m, T, Hkv, NSEL, NUNI, N_TILES, si_b, si_t, si_h,
                    P: tl.constexpr, NSEL_PAD: tl.constexpr):
    """A shared tile's choices: ids [P, NSEL_PAD] of its positions (-1 past T or past NSEL), a pointer to the
    union of their blocks (tile_union) and how many blocks it holds."""
    ppos = (pid_m * P + tl.arange(0, P)).to(tl.int64)
    slots = tl.arange(0, NSEL_PAD)
    ids = tl.load(IDX + b * si_b + ppos[:, None] * si_t + kvh.to(tl.int64) * si_h + slots[None, :],
                  mask=(ppos[:, None] < T) & (slots[None, :] < NSEL), other=-1)
    tile = (b * N_TILES + pid_m) * Hkv + kvh
    return ids, UNION + tile * NUNI, tl.load(COUNT + tile)


@triton.jit
def _union_keys(ids, j, kt, t0, T, pos, row_ok, SEL, P: tl.constexpr, G_PAD: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """Key tile kt of block j for a shared tile: int64 key positions [BLOCK_N], which to load (in the block and
    at or before the tile's last position), and vis [P*G_PAD, BLOCK_N]: the rows whose position chose j
    (ids [P, NSEL_PAD]) and sees the key."""
    chosen = tl.sum((ids == j).to(tl.int32), axis=1)  # [P]: > 0 when the position chose j (repeats count once)
    chosen_rows = tl.reshape(tl.broadcast_to(chosen[:, None], [P, G_PAD]), [P * G_PAD]) > 0
    koff = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    kpos = j.to(tl.int64) * SEL + koff
    k_ok = (koff < SEL) & (kpos < tl.minimum(t0 + P, T))
    vis = (chosen_rows & row_ok)[:, None] & k_ok[None, :] & (kpos[None, :] <= pos[:, None])
    return kpos, k_ok, vis


@triton.jit
def _selected_fwd_shared_kernel(
    Q, K, V, IDX, UNION, COUNT, OUT, LSE,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h, si_b, si_t, si_h,
    T, Hkv, G, NSEL, NUNI, N_TILES, qk_scale, SEL,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    G_PAD: tl.constexpr, P: tl.constexpr, NSEL_PAD: tl.constexpr, BLOCK_N: tl.constexpr, N_KT: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b, kvh, t0, pos, head, row_ok, q = _tile_queries(Q, pid_m, tl.program_id(1), T, Hkv, G, sq_b, sq_t, sq_h,
                                                      DK, BLOCK_DK, P, G_PAD)
    offs_dv = tl.arange(0, BLOCK_DV)
    ids, union, n_union = _tile_selection(IDX, UNION, COUNT, b, kvh, pid_m, T, Hkv, NSEL, NUNI, N_TILES,
                                          si_b, si_t, si_h, P, NSEL_PAD)
    k_base = K + b * sk_b + kvh.to(tl.int64) * sk_h
    v_base = V + b * sv_b + kvh.to(tl.int64) * sv_h

    m_i = tl.full([P * G_PAD], float("-inf"), ACC)
    l_i = tl.zeros([P * G_PAD], ACC)
    acc = tl.zeros([P * G_PAD, BLOCK_DV], ACC)
    for it in range(n_union * N_KT):
        j = tl.load(union + it // N_KT)
        kpos, k_ok, vis = _union_keys(ids, j, it % N_KT, t0, T, pos, row_ok, SEL, P, G_PAD, BLOCK_N)
        m_i, l_i, acc = attend_tile_rows(q, k_base, v_base, kpos, k_ok, vis, sk_t, sv_t, m_i, l_i, acc, qk_scale,
                                         DK, DV, BLOCK_DK, BLOCK_DV, ACC, PREC)

    o, lse = finish_rows(m_i, l_i, acc)
    tl.store(OUT + b * so_b + pos[:, None] * so_t + head[:, None] * so_h + offs_dv[None, :],
             o.to(OUT.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + (b * T + pos) * (Hkv * G) + head, lse, mask=row_ok)


@triton.jit
def _selected_bwd_dq_shared_kernel(
    Q, K, V, IDX, UNION, COUNT, DO, LSE, DELTA, DQ,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sdo_b, sdo_t, sdo_h, sdq_b, sdq_t, sdq_h,
    si_b, si_t, si_h,
    T, Hkv, G, NSEL, NUNI, N_TILES, qk_scale, sm_scale, SEL,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    G_PAD: tl.constexpr, P: tl.constexpr, NSEL_PAD: tl.constexpr, BLOCK_N: tl.constexpr, N_KT: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b, kvh, t0, pos, head, row_ok, q = _tile_queries(Q, pid_m, tl.program_id(1), T, Hkv, G, sq_b, sq_t, sq_h,
                                                      DK, BLOCK_DK, P, G_PAD)
    Hq = Hkv * G
    offs_dk = tl.arange(0, BLOCK_DK)
    do = load_rows(DO, b, pos, head, row_ok, sdo_b, sdo_t, sdo_h, DV, BLOCK_DV)
    lse2, delta = load_softmax_stats(LSE, DELTA, (b * T + pos) * Hq + head, row_ok)
    ids, union, n_union = _tile_selection(IDX, UNION, COUNT, b, kvh, pid_m, T, Hkv, NSEL, NUNI, N_TILES,
                                          si_b, si_t, si_h, P, NSEL_PAD)
    k_base = K + b * sk_b + kvh.to(tl.int64) * sk_h
    v_base = V + b * sv_b + kvh.to(tl.int64) * sv_h

    dq = tl.zeros([P * G_PAD, BLOCK_DK], ACC)
    for it in range(n_union * N_KT):
        j = tl.load(union + it // N_KT)
        kpos, k_ok, vis = _union_keys(ids, j, it % N_KT, t0, T, pos, row_ok, SEL, P, G_PAD, BLOCK_N)
        dq = dq_tile_rows(q, do, lse2, delta, k_base, v_base, kpos, k_ok, vis, sk_t, sv_t, dq, qk_scale,
                          DK, DV, BLOCK_DK, BLOCK_DV, ACC, PREC)
    dq = dq * sm_scale
    tl.store(DQ + b * sdq_b + pos[:, None] * sdq_t + head[:, None] * sdq_h + offs_dk[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_dk[None, :] < DK))


# ----------------------------------------------------------------------------------------------
# launchers


def _block_tile(select_size: int, cap: int = 64) -> tuple[int, int]:
    """(BLOCK_N, N_KT): key tiles of a selection block (BLOCK_N | l' when l' is a power of two)."""
    block_n = max(16, min(cap, next_pow2(select_size)))
    return block_n, triton.cdiv(select_size, block_n)


def _clean_idx(idx: torch.Tensor) -> torch.Tensor:
    """idx as contiguous int32 (ids outside int32 select nothing anyway: clamp them to -1)."""
    if idx.dtype != torch.int32:
        big = (idx > torch.iinfo(torch.int32).max) | (idx < -1)
        idx = torch.where(big, -1, idx).to(torch.int32)
    return idx.contiguous()


def shared_positions(share: int, G: int) -> int:
    """Positions per shared tile: `share` rounded up to a power of two, and enough for 16 MMA rows."""
    return next_pow2(max(share, 16 // next_pow2(G)))


def positions_per_program(share: int | None, cfg: dict[str, int], G: int) -> int:
    """Query positions one forward/dQ program takes: 1 is the one-position kernel, more the sharing kernels.

    share None means the tile's: its `share`, and for groups of fewer than `pack_below_g` heads at least the
    16/G positions that fill the MMA rows the one-position kernel pads (measured faster there even on random
    selections: docs/benchmarks.md). An explicit share (tests, benchmarks) is taken as it is."""
    if share is None:
        share = max(cfg.get("share", 1), 2 if G < cfg.get("pack_below_g", 0) else 1)
    return shared_positions(share, G) if share > 1 else 1


def tile_union(idx: torch.Tensor, positions: int, select_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks that each tile of `positions` consecutive queries selected, with torch ops only (no host sync).

    idx [B,T,Hkv,n] int32 -> union [B, n_tiles, Hkv, positions*n] int32 (ascending distinct valid ids: >= 0 and
    visible to some position of the tile, then -1) and count [B, n_tiles, Hkv] int32 (how many are valid).
    """
    B, T, Hkv, n = idx.shape
    n_tiles = triton.cdiv(T, positions)
    ids = idx.long()
    t = torch.arange(T, device=idx.device).view(1, T, 1, 1)
    none = torch.iinfo(torch.int32).max  # sorts last
    ids = torch.where((ids >= 0) & (ids * select_size <= t), ids, none)
    ids = torch.nn.functional.pad(ids, (0, 0, 0, 0, 0, n_tiles * positions - T), value=none)
    ids = ids.view(B, n_tiles, positions, Hkv, n).transpose(2, 3).reshape(B, n_tiles, Hkv, positions * n)
    ids = ids.sort(-1).values
    repeat = torch.nn.functional.pad(ids[..., 1:] == ids[..., :-1], (1, 0), value=False)
    ids = torch.where(repeat, none, ids).sort(-1).values
    count = (ids != none).sum(-1, dtype=torch.int32)
    return torch.where(ids == none, -1, ids).to(torch.int32).contiguous(), count.contiguous()


def selected_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, select_size: int,
                     scale: float, share: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B,T,Hq,Dk], k [B,T,Hkv,Dk], v [B,T,Hkv,Dv], idx [B,T,Hkv,n] -> o [B,T,Hq,Dv], lse [B,T,Hq].
    share: positions per program that share their blocks' loads (None: the "selected_fwd" tile's)."""
    q, k, v = bthd(q), bthd(k), bthd(v)
    idx = _clean_idx(idx)
    B, T, Hq, Dk = q.shape
    Hkv, Dv, n = k.shape[2], v.shape[3], idx.shape[3]
    G = Hq // Hkv
    o = torch.empty(B, T, Hq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, T, Hq, dtype=acc_dtype(q.dtype), device=q.device)
    bdk, bdv = head_block(Dk), head_block(Dv)
    cfg = gpu_tiles("selected_fwd", max(bdk, bdv))
    block_n, n_kt = _block_tile(select_size, cfg["block_n"])
    P = positions_per_program(share, cfg, G)
    if P > 1:
        union, count = tile_union(idx, P, select_size)
        _selected_fwd_shared_kernel[(union.shape[1], B * Hkv)](
            q, k, v, idx, union, count, o, lse,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            idx.stride(0), idx.stride(1), idx.stride(2),
            T, Hkv, G, n, union.shape[3], union.shape[1], scale * LOG2E, select_size,
            DK=Dk, DV=Dv, BLOCK_DK=bdk, BLOCK_DV=bdv, G_PAD=next_pow2(G), P=P, NSEL_PAD=next_pow2(max(n, 2)),
            BLOCK_N=block_n, N_KT=n_kt, ACC=tl_acc(q.dtype), PREC=dot_precision(q.dtype),
            num_warps=cfg.get("share_warps", cfg["warps"]), num_stages=cfg.get("share_stages", cfg["stages"]),
        )
        return o, lse
    desc = kv_descriptors(cfg, k, v, block_n, bdk, bdv)
    _selected_fwd_kernel[(T, B * Hkv)](
        q, *(desc or (k, v)), idx, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        idx.stride(0), idx.stride(1), idx.stride(2),
        T, Hkv, G, n, scale * LOG2E, select_size,
        DK=Dk, DV=Dv, BLOCK_DK=bdk, BLOCK_DV=bdv, G_PAD=max(16, next_pow2(G)), NSEL_PAD=next_pow2(max(n, 2)),
        BLOCK_N=block_n, N_KT=n_kt, ACC=tl_acc(q.dtype), PREC=dot_precision(q.dtype), TMA=desc is not None,
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    return o, lse


def inverted_index(idx: torch.Tensor, select_size: int, seg_len: int):
    """Group the (query, block) pairs of idx [B,T,Hkv,n] by (batch, KV head, block), with torch ops only and
    no host synchronisation (sizes follow from the shapes, so the op can run ahead of the GPU or in a graph).

    Returns (pos, bucket_off, item_bucket, item_seg, n_blocks): bucket u = (b*Hkv + h)*n_blocks + j holds
    the positions pos[bucket_off[u]:bucket_off[u+1]] (ascending) whose row selected block j (valid ids
    only: >= 0, j*l' <= t, first occurrence in the row); work item i is segment item_seg[i] (seg_len
    positions) of bucket item_bucket[i], or nothing when item_bucket[i] = -1.
    """
    B, T, Hkv, n = idx.shape
    dev = idx.device
    n_blocks = triton.cdiv(T, select_size)
    n_buckets = B * Hkv * n_blocks
    # int32 keys when they fit: the radix sort below then makes half the passes of int64 keys
    key_dtype = torch.int32 if n_buckets < torch.iinfo(torch.int32).max else torch.int64
    # Each row sorted on its own (slots are interchangeable: only the position t is kept), so a repeated id
    # sits next to its twin and one neighbour comparison drops it (comparing every pair of slots was n x n).
    ids = idx.sort(-1).values.to(key_dtype)
    first = torch.nn.functional.pad(ids[..., 1:] != ids[..., :-1], (1, 0), value=True)
    last_visible = (torch.arange(T, device=dev) // select_size).view(1, T, 1, 1)  # j*l' <= t, without overflow
    valid = (ids >= 0) & (ids <= last_visible) & first
    bh = torch.arange(B * Hkv, device=dev, dtype=key_dtype).view(B, 1, Hkv, 1)
    key = torch.where(valid, bh * n_blocks + ids, n_buckets).flatten()
    key, order = torch.sort(key, stable=True)  # stable: ascending positions inside a bucket
    pos = ((order // (Hkv * n)) % T).to(torch.int32)  # flat index (b, t, h, slot) -> t
    bucket_off = torch.searchsorted(key, torch.arange(n_buckets + 1, device=dev, dtype=key_dtype))  # bucket starts
    segs = (bucket_off.diff() + seg_len - 1) // seg_len
    seg_end = segs.cumsum(0)
    n_items = triton.cdiv(key.numel(), seg_len) + n_buckets  # >= sum(segs), known without a sync
    item = torch.arange(n_items, device=dev)
    item_bucket = torch.searchsorted(seg_end, item, right=True)
    has = item_bucket < n_buckets
    item_seg = item - (seg_end - segs)[item_bucket.clamp(max=n_buckets - 1)]
    item_seg = torch.where(has, item_seg, 0).to(torch.int32)
    item_bucket = torch.where(has, item_bucket, -1).to(torch.int32)
    return pos, bucket_off, item_bucket, item_seg, n_blocks


def selected_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                      o: torch.Tensor, lse: torch.Tensor, select_size: int, scale: float,
                      share: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of selected attention given do [B,T,Hq,Dv] (share: as selected_forward, for dQ;
    None: the "selected_dq" tile's)."""
    q, k, v, do = bthd(q), bthd(k), bthd(v), bthd(do)
    idx = _clean_idx(idx)
    B, T, Hq, Dk = q.shape
    Hkv, Dv, n = k.shape[2], v.shape[3], idx.shape[3]
    G = Hq // Hkv
    acc = acc_dtype(q.dtype)
    lse = lse.contiguous()
    bdk, bdv = head_block(Dk), head_block(Dv)
    cfg = gpu_tiles("selected_dq", max(bdk, bdv))
    block_n, n_kt = _block_tile(select_size, cfg["block_n"])
    common = dict(DK=Dk, DV=Dv, BLOCK_DK=bdk, BLOCK_DV=bdv, BLOCK_N=block_n, N_KT=n_kt,
                  ACC=tl_acc(q.dtype), PREC=dot_precision(q.dtype))

    dq = torch.empty_like(q)
    dkdv_cfg = gpu_tiles("selected_dkdv", max(bdk, bdv))
    atomic = bool(dkdv_cfg.get("atomic", 0))
    dk_acc = dv_acc = dq  # unused placeholders unless atomic
    if atomic:  # dK/dV added by the dQ programs themselves (the one-position kernel)
        dk_acc = torch.zeros(B, T, Hkv, Dk, dtype=acc, device=q.device)
        dv_acc = torch.zeros(B, T, Hkv, Dv, dtype=acc, device=q.device)
    P = 1 if atomic else positions_per_program(share, cfg, G)
    # fused_delta: the one-position dQ kernel computes the rows' delta itself (and stores it for the dK/dV kernel)
    fused_delta = P == 1 and bool(cfg.get("fused_delta"))
    o = bthd(o)
    delta = torch.empty(B, T, Hq, dtype=acc, device=q.device) if fused_delta else row_delta(o, do, None, acc)
    if P > 1:
        union, count = tile_union(idx, P, select_size)
        share_n, share_kt = _block_tile(select_size, cfg.get("share_block_n", 64))
        _selected_bwd_dq_shared_kernel[(union.shape[1], B * Hkv)](
            q, k, v, idx, union, count, do, lse, delta, dq,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2), idx.stride(0), idx.stride(1), idx.stride(2),
            T, Hkv, G, n, union.shape[3], union.shape[1], scale * LOG2E, scale, select_size,
            G_PAD=next_pow2(G), P=P, NSEL_PAD=next_pow2(max(n, 2)), **{**common, "BLOCK_N": share_n, "N_KT": share_kt},
            num_warps=cfg.get("share_warps", cfg["warps"]), num_stages=cfg["stages"],
        )
    else:
        desc = kv_descriptors(cfg, k, v, block_n, bdk, bdv)
        _selected_bwd_dq_kernel[(T, B * Hkv)](
            q, *(desc or (k, v)), idx, do, lse, delta, dq, dk_acc, dv_acc, o,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2), idx.stride(0), idx.stride(1), idx.stride(2),
            o.stride(0), o.stride(1), o.stride(2),
            T, Hkv, G, n, scale * LOG2E, scale, select_size,
            G_PAD=max(16, next_pow2(G)), NSEL_PAD=next_pow2(max(n, 2)), **common, ATOMIC_DKDV=atomic,
            TMA=desc is not None, FUSED_DELTA=fused_delta,
            num_warps=dkdv_cfg.get("atomic_warps", 8) if atomic else cfg["warps"], num_stages=cfg["stages"],
        )
    if atomic:
        return dq, dk_acc.to(k.dtype), dv_acc.to(v.dtype)

    # dK/dV: query rows = NPOS positions x G_PAD heads (32 rows keep the accumulators in registers)
    cfg = gpu_tiles("selected_dkdv", max(bdk, bdv))
    g_pad = next_pow2(G)
    npos = max(1, (16 if INTERPRETED else cfg["rows"]) // g_pad)
    block_n, n_kt = _block_tile(select_size, cfg["block_n"])
    common.update(BLOCK_N=block_n, N_KT=n_kt)
    seg_len = 8 if INTERPRETED else cfg["seg_len"]  # small in CI so that long lists really get split
    seg_len = triton.cdiv(seg_len, npos) * npos
    pos, bucket_off, item_bucket, item_seg, n_blocks = inverted_index(idx, select_size, seg_len)
    dk_acc = torch.zeros(B, T, Hkv, Dk, dtype=acc, device=q.device)
    dv_acc = torch.zeros(B, T, Hkv, Dv, dtype=acc, device=q.device)
    _selected_bwd_dkdv_kernel[(item_bucket.numel(),)](
        q, k, v, do, lse, delta, pos, bucket_off, item_bucket, item_seg, dk_acc, dv_acc,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
        T, Hkv, G, n_blocks, scale * LOG2E, scale, select_size, seg_len,
        G_PAD=g_pad, NPOS=npos, **common, KEY_MAJOR=bool(cfg.get("key_major")),
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    return dq, dk_acc.to(k.dtype), dv_acc.to(v.dtype)
