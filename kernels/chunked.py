"""Vectorised, query-chunked PyTorch path of NSA's four ops (what CPU tensors run without Triton).

Same math as kernels/reference.py (it reuses its `attend`, `masked_softmax` and `choose_blocks`), but
the queries are processed in tiles of `chunk_size` rows, and each tile only touches the keys it can see
(positions below are absolute: row r of q is the query at q_start + r, see kernels/reference.py):
- compressed_attention / select_blocks: the compressed tokens visible to the tile's last query;
- window_attention: keys [tile_start - w + 1, tile_end);
- selected_attention: the blocks selected by any row of the tile, gathered straight from k and v
  (once per tile and KV head, masked per row); blocks wholly in the tile's future are skipped.
So no [T, T] (or [T, T/d]) score matrix ever exists: the largest intermediate is one tile's
([B, Hq, tile, <= T] for the selection branch when the tile's rows pick very different blocks).

One decoding step (T = 1 at q_start = S - 1) is one tile that reads only what that query attends: the
visible compressed tokens, the keys of its n selected blocks and the last w keys. Nothing is done per
key of the sequence; select_blocks' scores are O(number of compressed tokens), the inherent scan (its
block scores are a sliding sum over stride units, not a [Tc, S/l'] weight matrix).

When a gradient is needed, each tile runs under activation checkpointing: the forward keeps only
the tile's inputs (views of q, k, v) and the backward recomputes the tile's scores. Without that,
autograd would keep every tile's probabilities alive until the backward, i.e. all of [T, S] again.

Inputs are assumed valid: the public ops in kernels/__init__.py run the checks first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from kernels.reference import (
    attend,
    choose_blocks,
    compute_dtype,
    num_compressed_tokens,
    resolve_scale,
)

QUERY_TILE = 256  # query rows per tile for the compression, selection-scoring and window ops
SCORE_BUDGET = 1 << 24  # max elements of one tile's [B, Hq, rows, keys] scores in selected_attention


def _run_tile(fn: Callable[..., object], *args: torch.Tensor):
    """fn(*args), checkpointed when autograd will need it (recompute in backward instead of storing)."""
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
    return fn(*args)


def _tiles(T: int, chunk_size: int):
    for t0 in range(0, T, chunk_size):
        yield t0, min(T, t0 + chunk_size)


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, block_size: int,
                         stride: int, scale: float | None = None, q_start: int = 0,
                         chunk_size: int = QUERY_TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked kernels.reference.compressed_attention; returns (o [B,T,Hq,Dv], lse [B,T,Hq] float32)."""
    T = q.shape[1]
    scale = resolve_scale(scale, q.shape[-1])

    def tile(p0: int, qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor):
        t = p0 + torch.arange(qt.shape[1], device=qt.device)
        i = torch.arange(kt.shape[1], device=qt.device)
        visible = i[None, :] * stride + block_size - 1 <= t[:, None]  # [R, S]
        return attend(qt, kt, vt, visible, scale)

    outs, lses = [], []
    for r0, r1 in _tiles(T, chunk_size):
        p0 = q_start + r0  # position of the tile's first row
        n_vis = num_compressed_tokens(q_start + r1, block_size, stride)  # what the tile's last row sees
        o, lse = _run_tile(lambda qt, kt, vt, p0=p0: tile(p0, qt, kt, vt),
                           q[:, r0:r1], k_cmp[:, :n_vis], v_cmp[:, :n_vis])
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def _block_scores(p: torch.Tensor, num_blocks: int, *, block_size: int, stride: int,
                  select_size: int) -> torch.Tensor:
    """p [..., Tc] importance of compressed tokens -> [..., num_blocks] = p @ overlap_weights(Tc, num_blocks).

    In units of the stride d (d divides l and l'), compressed token i covers units [i, i + l/d) and
    selection block j the units [j*l'/d, (j+1)*l'/d); the overlap weight is the number of shared units.
    So a unit's share is the sliding sum of p over the l/d compressed tokens covering it, and a block's
    score the sum of its units' shares: O(Tc * l/d) work instead of a [Tc, num_blocks] matmul.
    (Needs num_blocks * l' >= (Tc - 1) * d + l, i.e. every compressed block inside the blocks.)
    """
    per_cmp, per_block = block_size // stride, select_size // stride
    units = num_blocks * per_block
    # unit u collects p[u - per_cmp + 1 .. u]: pad per_cmp - 1 zeros in front, the rest of the units behind
    padded = torch.nn.functional.pad(p, (per_cmp - 1, units - p.shape[-1]))
    share = padded.unfold(-1, per_cmp, 1).sum(dim=-1)  # [..., units]
    return share.reshape(*share.shape[:-1], num_blocks, per_block).sum(dim=-1)


@torch.no_grad()
def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, *, block_size: int, stride: int,
                  select_size: int, num_select: int, num_init: int = 1, num_local: int = 2,
                  scale: float | None = None, q_start: int = 0, chunk_size: int = QUERY_TILE) -> torch.Tensor:
    """Chunked kernels.reference.select_blocks: int32 [B, T, Hkv, num_select], ascending ids then -1."""
    B, T, Hq, Dk = q.shape
    Hkv = k_cmp.shape[2]
    G = Hq // Hkv
    ct = compute_dtype(q.dtype)
    scale = resolve_scale(scale, Dk)
    out = []
    for r0, r1 in _tiles(T, chunk_size):
        p0, p1 = q_start + r0, q_start + r1  # positions of the tile's rows: p0 .. p1 - 1
        n_vis = num_compressed_tokens(p1, block_size, stride)
        n_blocks = (p1 - 1) // select_size + 1  # blocks visible to the tile's last row
        t = torch.arange(p0, p1, device=q.device)
        visible = torch.arange(n_vis, device=q.device)[None, :] * stride + block_size - 1 <= t[:, None]
        qg = q[:, r0:r1].to(ct).reshape(B, r1 - r0, Hkv, G, Dk)
        lse_g = lse[:, r0:r1].to(ct).reshape(B, r1 - r0, Hkv, G, 1)
        p = torch.exp(torch.einsum("bthgd,bihd->bthgi", qg, k_cmp[:, :n_vis].to(ct)) * scale - lse_g)
        p = torch.where(visible[None, :, None, None, :] & torch.isfinite(lse_g), p, torch.zeros_like(p))
        block_score = _block_scores(p.sum(dim=3), n_blocks, block_size=block_size, stride=stride,
                                    select_size=select_size)
        out.append(choose_blocks(block_score, t, select_size=select_size, num_select=num_select,
                                 num_init=num_init, num_local=num_local))
    return torch.cat(out, dim=1)


def _selected_tile(p0: int, scale: float, qt: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   idx_t: torch.Tensor, select_size: int) -> torch.Tensor:
    """Rows of selected attention for the queries at positions p0 .. p0+R-1, via the union of their blocks.

    qt [B, R, Hq, Dk], k [B, S, Hkv, Dk] / v [B, S, Hkv, Dv] (all keys, only the chosen blocks are read),
    idx_t [B, R, Hkv, n]. Neighbouring queries mostly pick the same blocks, so the tile gathers each block
    it uses once (shared by its rows and the G heads of a group) and masks, per row, the blocks that row
    did not pick. The union comes from sorting the tile's R*n ids: no work per block of the sequence.
    """
    R, S = qt.shape[1], k.shape[1]
    dev, ss = qt.device, select_size
    ids = idx_t.long().permute(0, 2, 1, 3)  # [B, Hkv, R, n]
    last_block = (p0 + R - 1) // ss  # blocks past it are in the future of every row of the tile
    valid = (ids >= 0) & (ids <= last_block)
    ids = torch.where(valid, ids, -2)  # -2: matches no gathered block
    # the distinct valid ids of each (batch, KV head): sort, blank repeats and invalid ones, sort again
    big = last_block + 1
    srt = torch.where(valid, ids, big).flatten(2).sort(dim=-1).values  # [B, Hkv, R*n]
    repeat = torch.zeros_like(srt, dtype=torch.bool)
    repeat[..., 1:] = srt[..., 1:] == srt[..., :-1]
    srt = torch.where(repeat, big, srt).sort(dim=-1).values
    U = max(1, int((srt < big).sum(dim=-1).max()))  # >= 1 so an all-empty tile still yields (zero) outputs
    blocks = torch.where(srt[..., :U] < big, srt[..., :U], -1)  # [B, Hkv, U]; -1 pads, picked by no row
    picked = (ids[..., :, None] == blocks[:, :, None, None, :]).any(dim=-2)  # [B, Hkv, R, U]
    pos = blocks[..., None] * ss + torch.arange(ss, device=dev)  # [B, Hkv, U, l'] key positions
    t = p0 + torch.arange(R, device=dev)
    mask = picked[..., None] & (pos[:, :, None] <= t[:, None, None])  # [B, Hkv, R, U, l'], causal
    # positions past the sequence (the last block's tail) or of pad blocks are masked: read any valid key
    at = pos.clamp(0, S - 1).flatten(2)  # [B, Hkv, U*l']
    b = torch.arange(at.shape[0], device=dev)[:, None, None]
    h = torch.arange(at.shape[1], device=dev)[None, :, None]
    k_u, v_u = k[b, at, h], v[b, at, h]  # [B, Hkv, U*l', D]: reads only the gathered rows
    return attend(qt, k_u.transpose(1, 2), v_u.transpose(1, 2), mask.flatten(-2)[:, :, None], scale,
                  need_lse=False)[0]


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *,
                       select_size: int, scale: float | None = None, q_start: int = 0,
                       chunk_size: int = QUERY_TILE) -> torch.Tensor:
    """Chunked kernels.reference.selected_attention -> o [B, T, Hq, Dv].

    Rows per tile shrink below chunk_size when a tile's scores, at worst [B, Hq, rows, S] (every
    block in the union), would exceed SCORE_BUDGET elements.
    """
    B, T, Hq, _ = q.shape
    S = k.shape[1]
    scale = resolve_scale(scale, q.shape[-1])
    rows = max(1, min(chunk_size, SCORE_BUDGET // (B * Hq * math.ceil(S / select_size) * select_size)))
    outs = []
    for r0, r1 in _tiles(T, rows):
        outs.append(_run_tile(lambda qt, kk, vv, it, p0=q_start + r0: _selected_tile(p0, scale, qt, kk, vv, it,
                                                                                       select_size),
                              q[:, r0:r1], k, v, idx[:, r0:r1]))
    return torch.cat(outs, dim=1)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int,
                     scale: float | None = None, q_start: int = 0, chunk_size: int = QUERY_TILE) -> torch.Tensor:
    """Chunked kernels.reference.window_attention -> o [B, T, Hq, Dv]; the tile of positions p0 .. p1-1
    reads keys [p0 - w + 1, p1)."""
    T = q.shape[1]
    scale = resolve_scale(scale, q.shape[-1])

    def tile(p0: int, lo: int, qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
        t = p0 + torch.arange(qt.shape[1], device=qt.device)
        s = lo + torch.arange(kt.shape[1], device=qt.device)
        mask = (s[None, :] <= t[:, None]) & (s[None, :] > t[:, None] - window)  # [R, S]
        return attend(qt, kt, vt, mask, scale, need_lse=False)[0]

    outs = []
    for r0, r1 in _tiles(T, chunk_size):
        p0, p1 = q_start + r0, q_start + r1
        lo = max(0, p0 - window + 1)
        outs.append(_run_tile(lambda qt, kt, vt, p0=p0, lo=lo: tile(p0, lo, qt, kt, vt),
                              q[:, r0:r1], k[:, lo:p1], v[:, lo:p1]))
    return torch.cat(outs, dim=1)
