"""Triton kernels for NSA's two "banded" branches: compressed attention and sliding-window attention.

Both are causal attention in which key j becomes visible at position first(j) = j*KS + KOFF and stays
visible for WIN positions:

    key j visible to query t  iff  j*KS + KOFF <= t < j*KS + KOFF + WIN

- compressed attention: KS = stride d, KOFF = block_size l - 1 (the whole block [j*d, j*d + l) seen), WIN = T;
- window attention:     KS = 1, KOFF = 0, WIN = window w (keys t - w < j <= t).

So one FlashAttention-style kernel family serves both: forward (online softmax in the log2 domain, lse
saved), dK/dV (one program per key tile walking the queries that see it) and dQ (one program per query
tile walking its keys). Tiles outside the band are never visited.

Group-centric rows: a program's query tile holds NPOS consecutive positions x all G heads of one KV
group (row r = position t0 + r // G_PAD, head kvh*G + r % G_PAD), so every K/V tile loaded serves all
G heads, and small G still fills a tile of >= 16 rows with several positions.
Offsets are int64 (b, t, h are widened before multiplying by strides), so T*H*D may pass 2^31.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_common import (
    INTERPRETED,
    LOG2E,
    acc_dtype,
    add_key_grads,
    attend_kv,
    attend_tile_rows,
    bthd,
    dot_precision,
    dq_kv,
    dq_softmax_stats,
    dq_tile_rows,
    finish_rows,
    gpu_tiles,
    group_rows,
    head_block,
    kv_block,
    kv_descriptors,
    load_kv_tile,
    load_rows,
    load_softmax_stats,
    next_pow2,
    sm_count,
    store_row_delta,
    tl_acc,
)


@triton.jit
def _in_band(first, pos, WIN):
    """Whether the query at pos sees the key first seen at position first: first <= pos < first + WIN
    (elementwise, broadcasting; first(j) = j * KS + KOFF)."""
    return (first <= pos) & (pos < first + WIN)


@triton.jit
def _band_visible(j, j_ok, pos, KS, KOFF, WIN):
    """[R, BLOCK_N] which keys j each query row at pos sees (j < S)."""
    return _in_band((j * KS + KOFF)[None, :], pos[:, None], WIN) & j_ok[None, :]


@triton.jit
def _band_keys(j0, pos, S, KS, KOFF, WIN, BLOCK_N: tl.constexpr):
    """The key tile j0 .. j0 + BLOCK_N - 1 of a query tile: key positions [BLOCK_N] (int64), which exist (j < S),
    and which of them each row sees [R, BLOCK_N]."""
    j = j0 + tl.arange(0, BLOCK_N)
    j_ok = j < S
    return j.to(tl.int64), j_ok, _band_visible(j, j_ok, pos, KS, KOFF, WIN)


@triton.jit
def _band_fwd_kernel(
    Q, K, V, OUT, LSE,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
    T, S, Hkv, G, qk_scale, KS, KOFF, WIN,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    G_PAD: tl.constexpr, NPOS: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    TMA: tl.constexpr = False,
):
    """Banded attention of one query tile. TMA: K and V are tensor descriptors (kv_block), not pointers."""
    BM: tl.constexpr = NPOS * G_PAD
    b, kvh, t0, pos, head, row_ok = group_rows(tl.program_id(0), tl.program_id(1), T, Hkv, G, NPOS, G_PAD)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = load_rows(Q, b, pos.to(tl.int64), head, row_ok, sq_b, sq_t, sq_h, DK, BLOCK_DK)

    lo, hi = _key_tiles(t0, tl.minimum(t0 + NPOS, T) - 1, S, KS, KOFF, WIN, BLOCK_N)
    if not TMA:
        k_base = K + b * sk_b + kvh.to(tl.int64) * sk_h
        v_base = V + b * sv_b + kvh.to(tl.int64) * sv_h
    m_i = tl.full([BM], float("-inf"), ACC)
    l_i = tl.zeros([BM], ACC)
    acc = tl.zeros([BM, BLOCK_DV], ACC)
    for j0 in range(lo, hi, BLOCK_N):
        kpos, k_ok, vis = _band_keys(j0, pos, S, KS, KOFF, WIN, BLOCK_N)
        if TMA:
            k, v = kv_block(K, V, b, j0, kvh, BLOCK_N, BLOCK_DK, BLOCK_DV)
            m_i, l_i, acc = attend_kv(q, k, v, vis, m_i, l_i, acc, qk_scale, ACC, PREC)
        else:
            m_i, l_i, acc = attend_tile_rows(q, k_base, v_base, kpos, k_ok, vis, sk_t, sv_t, m_i, l_i, acc,
                                             qk_scale, DK, DV, BLOCK_DK, BLOCK_DV, ACC, PREC)

    o, lse = finish_rows(m_i, l_i, acc)
    o_rows = OUT + b * so_b + pos.to(tl.int64) * so_t + head * so_h
    tl.store(o_rows[:, None] + offs_dv[None, :], o.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    # lse is a contiguous [B, T, Hq] buffer
    Hq = Hkv * G
    tl.store(LSE + (b * T + pos) * Hq + head, lse, mask=row_ok)


@triton.jit
def _row_delta_kernel(OUT, DO, DLSE, DELTA, n_rows, DV: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_DV: tl.constexpr, HAS_DLSE: tl.constexpr):
    """delta[r] = sum_d o[r, d] * do[r, d] - dlse[r] over contiguous [rows, DV] views (softmax backward)."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, BLOCK_DV)
    r_ok = r < n_rows
    m = r_ok[:, None] & (d[None, :] < DV)
    o = tl.load(OUT + r[:, None] * DV + d[None, :], mask=m, other=0.0)
    do = tl.load(DO + r[:, None] * DV + d[None, :], mask=m, other=0.0)
    store_row_delta(o, do, DLSE, DELTA, r, r_ok, HAS_DLSE)


@triton.jit
def _band_dkdv_tile(q_base, do_base, LSE, DELTA, t0, rows, g, head, k, v, j, j_ok, dk, dv, b, T, Hq, G, t_lo,
                    t_hi, qk_scale, KS, KOFF, WIN, sq_t, sdo_t, DK: tl.constexpr, DV: tl.constexpr,
                    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, G_PAD: tl.constexpr, ACC: tl.constexpr,
                    PREC: tl.constexpr):
    """Add query tile t0's contribution to (dk, dv) of one key tile."""
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    pos = t0 + rows // G_PAD
    row_ok = (g < G) & (pos < t_hi) & (pos >= t_lo)
    pos64 = pos.to(tl.int64)
    q = tl.load(q_base + pos64[:, None] * sq_t + offs_dk[None, :],
                mask=row_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
    do = tl.load(do_base + pos64[:, None] * sdo_t + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    lse2, delta = load_softmax_stats(LSE, DELTA, (b * T + pos64) * Hq + head, row_ok)
    vis = _band_visible(j, j_ok, pos, KS, KOFF, WIN) & row_ok[:, None]
    return add_key_grads(q, do, lse2, delta, k, v, vis, dk, dv, qk_scale, ACC, PREC)


@triton.jit
def _band_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK_OUT, DV_OUT,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sdo_b, sdo_t, sdo_h,
    T, S, Hkv, G, sm_scale, qk_scale, KS, KOFF, WIN, SPLIT_LEN,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    G_PAD: tl.constexpr, NPOS: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """dK, dV of one key tile, summed over the G heads and the queries of split pid_s.

    Writes ACC-dtype partial sums to DK_OUT/DV_OUT [NSPLIT, B, S, Hkv, D] (contiguous); the launcher
    sums the splits (NSPLIT > 1 only where few key tiles would leave the GPU idle).
    """
    BM: tl.constexpr = NPOS * G_PAD
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // Hkv).to(tl.int64)
    kvh = pid_bh % Hkv
    j0 = pid_n * BLOCK_N
    j = j0 + tl.arange(0, BLOCK_N)
    j_ok = j < S
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k, v = load_kv_tile(K + b * sk_b + kvh.to(tl.int64) * sk_h, V + b * sv_b + kvh.to(tl.int64) * sv_h,
                        j.to(tl.int64), j_ok, sk_t, sv_t, DK, DV, BLOCK_DK, BLOCK_DV)

    # queries that see some key of the tile, restricted to this split's share of [0, T)
    j_last = tl.minimum(j0 + BLOCK_N, S) - 1
    t_lo = tl.maximum(j0 * KS + KOFF, pid_s * SPLIT_LEN)
    t_hi = tl.minimum(tl.minimum(T, j_last * KS + KOFF + WIN), (pid_s + 1) * SPLIT_LEN)
    start = (t_lo // NPOS) * NPOS

    rows = tl.arange(0, BM)
    g = rows % G_PAD
    head = (kvh * G + g).to(tl.int64)
    Hq = Hkv * G
    q_base = Q + b * sq_b + head[:, None] * sq_h
    do_base = DO + b * sdo_b + head[:, None] * sdo_h
    dk = tl.zeros([BLOCK_N, BLOCK_DK], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], ACC)
    for t0 in range(start, t_hi, NPOS):
        dk, dv = _band_dkdv_tile(q_base, do_base, LSE, DELTA, t0, rows, g, head, k, v, j, j_ok, dk, dv, b, T,
                                 Hq, G, t_lo, t_hi, qk_scale, KS, KOFF, WIN, sq_t, sdo_t, DK, DV, BLOCK_DK, BLOCK_DV,
                                 G_PAD, ACC, PREC)
    dk = dk * sm_scale

    B = tl.num_programs(1) // Hkv
    out_row = ((pid_s * B + b) * S + j.to(tl.int64)) * Hkv + kvh
    tl.store(DK_OUT + out_row[:, None] * DK + offs_dk[None, :], dk, mask=j_ok[:, None] & (offs_dk[None, :] < DK))
    tl.store(DV_OUT + out_row[:, None] * DV + offs_dv[None, :], dv, mask=j_ok[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _key_tiles(t0, t_last, S, KS, KOFF, WIN, BLOCK_N: tl.constexpr):
    """The key tiles that query rows t0 .. t_last walk, as [lo, hi) with lo a multiple of BLOCK_N: the keys some
    row sees (first(j) <= t_last, first(j) + WIN > t0). (Tiles that every row sees whole could skip the mask in
    a loop of their own: 21-27% fewer instructions per tile, but no faster on the H200; docs/benchmarks.md.)"""
    hi = tl.minimum(tl.maximum(t_last - KOFF + KS, 0) // KS, S)
    lo = tl.maximum(t0 - KOFF - WIN + KS, 0) // KS
    return (lo // BLOCK_N) * BLOCK_N, hi


@triton.jit
def _band_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, OUT, DLSE,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sdo_b, sdo_t, sdo_h, sdq_b, sdq_t, sdq_h, so_b, so_t, so_h,
    T, S, Hkv, G, sm_scale, qk_scale, KS, KOFF, WIN,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    G_PAD: tl.constexpr, NPOS: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    TMA: tl.constexpr = False, FUSED_DELTA: tl.constexpr = False, HAS_DLSE: tl.constexpr = False,
):
    """dQ of one query tile. TMA: K and V are tensor descriptors (kv_block), not pointers. FUSED_DELTA: the rows'
    delta computed here from OUT (and DLSE if HAS_DLSE) and stored to DELTA, which the dK/dV kernel then reads."""
    BM: tl.constexpr = NPOS * G_PAD
    b, kvh, t0, pos, head, row_ok = group_rows(tl.program_id(0), tl.program_id(1), T, Hkv, G, NPOS, G_PAD)
    pos64 = pos.to(tl.int64)
    offs_dk = tl.arange(0, BLOCK_DK)
    Hq = Hkv * G
    q = load_rows(Q, b, pos64, head, row_ok, sq_b, sq_t, sq_h, DK, BLOCK_DK)
    do = load_rows(DO, b, pos64, head, row_ok, sdo_b, sdo_t, sdo_h, DV, BLOCK_DV)
    o = load_rows(OUT, b, pos64, head, row_ok, so_b, so_t, so_h, DV, BLOCK_DV)  # read only if FUSED_DELTA
    lse2, delta = dq_softmax_stats(LSE, DELTA, DLSE, o, do, (b * T + pos64) * Hq + head, row_ok, FUSED_DELTA,
                                   HAS_DLSE)

    lo, hi = _key_tiles(t0, tl.minimum(t0 + NPOS, T) - 1, S, KS, KOFF, WIN, BLOCK_N)
    if not TMA:
        k_base = K + b * sk_b + kvh.to(tl.int64) * sk_h
        v_base = V + b * sv_b + kvh.to(tl.int64) * sv_h
    dq = tl.zeros([BM, BLOCK_DK], ACC)
    for j0 in range(lo, hi, BLOCK_N):
        kpos, k_ok, vis = _band_keys(j0, pos, S, KS, KOFF, WIN, BLOCK_N)
        if TMA:
            k, v = kv_block(K, V, b, j0, kvh, BLOCK_N, BLOCK_DK, BLOCK_DV)
            dq = dq_kv(q, do, lse2, delta, k, v, vis, dq, qk_scale, ACC, PREC)
        else:
            dq = dq_tile_rows(q, do, lse2, delta, k_base, v_base, kpos, k_ok, vis, sk_t, sv_t, dq, qk_scale,
                              DK, DV, BLOCK_DK, BLOCK_DV, ACC, PREC)
    dq = dq * sm_scale
    tl.store(DQ + b * sdq_b + pos64[:, None] * sdq_t + head[:, None] * sdq_h + offs_dk[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_dk[None, :] < DK))


# ----------------------------------------------------------------------------------------------
# launchers


def _tiles(G: int, rows_gpu: int, rows_interp: int = 32) -> tuple[int, int]:
    """(G_PAD, NPOS): query tiles of NPOS positions x G_PAD head rows (>= 16 rows, a power of two)."""
    g_pad = next_pow2(G)
    rows = max(rows_interp if INTERPRETED else rows_gpu, 16, g_pad)
    return g_pad, rows // g_pad


def _window_bound(win: int, T: int) -> int:
    """WIN of the band: -1 means unbounded (compressed attention), i.e. every later position."""
    return T if win < 0 else win


def band_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: int, koff: int, win: int,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Banded attention forward. q [B,T,Hq,Dk], k [B,S,Hkv,Dk], v [B,S,Hkv,Dv] ->
    o [B,T,Hq,Dv] (q's dtype), lse [B,T,Hq] (float32; float64 for float64 inputs), -inf where nothing is visible."""
    q, k, v = bthd(q), bthd(k), bthd(v)
    B, T, Hq, Dk = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    o = torch.empty(B, T, Hq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, T, Hq, dtype=acc_dtype(q.dtype), device=q.device)
    if S == 0:  # no key exists (compressed branch with T < block_size)
        return o.zero_(), lse.fill_(float("-inf"))
    bdk, bdv = head_block(Dk), head_block(Dv)
    cfg = gpu_tiles("band_fwd", max(bdk, bdv))
    g_pad, npos = _tiles(G, cfg["rows"])
    block_n = 16 if INTERPRETED else cfg["block_n"]
    grid = (triton.cdiv(T, npos), B * Hkv)
    desc = kv_descriptors(cfg, k, v, block_n, bdk, bdv)
    _band_fwd_kernel[grid](
        q, *(desc or (k, v)), o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        T, S, Hkv, G, scale * LOG2E, ks, koff, _window_bound(win, T),
        DK=Dk, DV=Dv, BLOCK_DK=bdk, BLOCK_DV=bdv, G_PAD=g_pad, NPOS=npos, BLOCK_N=block_n,
        ACC=tl_acc(q.dtype), PREC=dot_precision(q.dtype), TMA=desc is not None,
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    return o, lse


def row_delta(o: torch.Tensor, do: torch.Tensor, dlse: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """delta [B, T, Hq] = sum(o * do, -1) - dlse: the softmax-backward row term (dlse: gradient of lse)."""
    o, do = o.contiguous(), do.contiguous()
    B, T, Hq, Dv = o.shape
    n_rows = B * T * Hq
    delta = torch.empty(B, T, Hq, dtype=dtype, device=o.device)
    block_r = 16 if INTERPRETED else 64
    dlse_arg = dlse.contiguous() if dlse is not None else delta
    _row_delta_kernel[(triton.cdiv(n_rows, block_r),)](
        o, do, dlse_arg, delta, n_rows, DV=Dv, BLOCK_R=block_r, BLOCK_DV=head_block(Dv),
        HAS_DLSE=dlse is not None)
    return delta


def band_backward(do: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  o: torch.Tensor, lse: torch.Tensor, ks: int, koff: int, win: int,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of banded attention given do [B,T,Hq,Dv] and dlse [B,T,Hq] (None = zero)."""
    q, k, v, do = bthd(q), bthd(k), bthd(v), bthd(do)
    B, T, Hq, Dk = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    if S == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    acc = acc_dtype(q.dtype)
    lse = lse.contiguous()
    bdk, bdv = head_block(Dk), head_block(Dv)
    WIN = _window_bound(win, T)
    common = dict(DK=Dk, DV=Dv, BLOCK_DK=bdk, BLOCK_DV=bdv, ACC=tl_acc(q.dtype), PREC=dot_precision(q.dtype))

    # dQ: one program per query tile; with fused_delta it also writes the rows' delta for the dK/dV kernel below
    cfg = gpu_tiles("band_dq", max(bdk, bdv))
    g_pad, npos = _tiles(G, cfg["rows"], rows_interp=16)
    block_n = 16 if INTERPRETED else cfg["block_n"]
    fused_delta = bool(cfg.get("fused_delta"))
    o = bthd(o)
    delta = torch.empty(B, T, Hq, dtype=acc, device=q.device) if fused_delta else row_delta(o, do, dlse, acc)
    dq = torch.empty_like(q)
    desc = kv_descriptors(cfg, k, v, block_n, bdk, bdv)
    _band_bwd_dq_kernel[(triton.cdiv(T, npos), B * Hkv)](
        q, *(desc or (k, v)), do, lse, delta, dq, o, dlse.contiguous() if dlse is not None else delta,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2), o.stride(0), o.stride(1), o.stride(2),
        T, S, Hkv, G, scale, scale * LOG2E, ks, koff, WIN,
        G_PAD=g_pad, NPOS=npos, BLOCK_N=block_n, **common, TMA=desc is not None,
        FUSED_DELTA=fused_delta, HAS_DLSE=dlse is not None,
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )

    # dK, dV: one program per key tile (x query split); split the queries when key tiles are few
    cfg = gpu_tiles("band_dkdv", max(bdk, bdv))
    g_pad, npos = _tiles(G, cfg["rows"], rows_interp=16)
    block_n = 16 if INTERPRETED else cfg["block_n"]
    n_tiles = triton.cdiv(S, block_n)
    if INTERPRETED:
        nsplit = 2 if T > 32 else 1  # exercise the split path in CI
    elif win >= 0:
        nsplit = 1  # window: each key tile sees only ~w + BLOCK_N queries
    else:
        # compressed: key tile j0 is seen by every query from j0*d + l - 1 on, so the first tiles would each
        # walk ~T queries while the last walk few. Cut [0, T) into splits of at most 4k queries (partial sums in
        # ACC dtype), and into enough that about split_waves waves of programs have work: with nsplit splits,
        # about half of the n_tiles * nsplit (tile, split) pairs lie in the triangle of visible queries.
        waves = cfg["split_waves"] * sm_count(q.device)
        nsplit = min(max(triton.cdiv(T, 4096), triton.cdiv(2 * waves, n_tiles * B * Hkv)), 32)
    split_len = triton.cdiv(triton.cdiv(T, nsplit), npos) * npos
    nsplit = triton.cdiv(T, split_len)
    dk_part = torch.empty(nsplit, B, S, Hkv, Dk, dtype=acc, device=q.device)
    dv_part = torch.empty(nsplit, B, S, Hkv, Dv, dtype=acc, device=q.device)
    _band_bwd_dkdv_kernel[(n_tiles, B * Hkv, nsplit)](
        q, k, v, do, lse, delta, dk_part, dv_part,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
        T, S, Hkv, G, scale, scale * LOG2E, ks, koff, WIN, split_len,
        G_PAD=g_pad, NPOS=npos, BLOCK_N=block_n, **common,
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    dk = (dk_part[0] if nsplit == 1 else dk_part.sum(0)).to(k.dtype)
    dv = (dv_part[0] if nsplit == 1 else dv_part.sum(0)).to(v.dtype)
    return dq, dk, dv
