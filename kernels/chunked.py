"""Vectorised, query-chunked PyTorch path of NSA's four ops (what CPU tensors run without Triton).

Same math as kernels/reference.py (it reuses its `attend`, `masked_softmax`, `overlap_weights` and
`choose_blocks`), but the queries are processed in tiles of `chunk_size` rows, and each tile only
touches the keys it can see:
- compressed_attention / select_blocks: the compressed tokens visible to the tile's last query;
- window_attention: keys [tile_start - w + 1, tile_end);
- selected_attention: the blocks selected by any row of the tile (gathered once per tile and KV
  head, masked per row); blocks wholly in the tile's future are skipped.
So no [T, T] (or [T, T/d]) score matrix ever exists: the largest intermediate is one tile's
([B, Hq, tile, <= T] for the selection branch when the tile's rows pick very different blocks).

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
    overlap_weights,
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
                         stride: int, scale: float | None = None,
                         chunk_size: int = QUERY_TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked kernels.reference.compressed_attention; returns (o [B,T,Hq,Dv], lse [B,T,Hq] float32)."""
    T = q.shape[1]
    scale = resolve_scale(scale, q.shape[-1])

    def tile(t0: int, qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor):
        t = t0 + torch.arange(qt.shape[1], device=qt.device)
        i = torch.arange(kt.shape[1], device=qt.device)
        visible = i[None, :] * stride + block_size - 1 <= t[:, None]  # [R, S]
        return attend(qt, kt, vt, visible, scale)

    outs, lses = [], []
    for t0, t1 in _tiles(T, chunk_size):
        n_vis = num_compressed_tokens(t1, block_size, stride)  # compressed tokens the tile's last row sees
        o, lse = _run_tile(lambda qt, kt, vt, t0=t0: tile(t0, qt, kt, vt),
                           q[:, t0:t1], k_cmp[:, :n_vis], v_cmp[:, :n_vis])
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


@torch.no_grad()
def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, *, block_size: int, stride: int,
                  select_size: int, num_select: int, num_init: int = 1, num_local: int = 2,
                  scale: float | None = None, chunk_size: int = QUERY_TILE) -> torch.Tensor:
    """Chunked kernels.reference.select_blocks: int32 [B, T, Hkv, num_select], ascending ids then -1."""
    B, T, Hq, Dk = q.shape
    Tc, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    G = Hq // Hkv
    ct = compute_dtype(q.dtype)
    scale = resolve_scale(scale, Dk)
    W = overlap_weights(Tc, math.ceil(T / select_size), block_size=block_size, stride=stride,
                        select_size=select_size, dtype=ct, device=q.device)
    kc = k_cmp.to(ct)
    out = []
    for t0, t1 in _tiles(T, chunk_size):
        n_vis = num_compressed_tokens(t1, block_size, stride)
        n_blocks = (t1 - 1) // select_size + 1  # blocks visible to the tile's last row
        t = torch.arange(t0, t1, device=q.device)
        visible = torch.arange(n_vis, device=q.device)[None, :] * stride + block_size - 1 <= t[:, None]
        qg = q[:, t0:t1].to(ct).reshape(B, t1 - t0, Hkv, G, Dk)
        lse_g = lse[:, t0:t1].to(ct).reshape(B, t1 - t0, Hkv, G, 1)
        p = torch.exp(torch.einsum("bthgd,bihd->bthgi", qg, kc[:, :n_vis]) * scale - lse_g)
        p = torch.where(visible[None, :, None, None, :] & torch.isfinite(lse_g), p, torch.zeros_like(p))
        block_score = p.sum(dim=3) @ W[:n_vis, :n_blocks]
        out.append(choose_blocks(block_score, t, select_size=select_size, num_select=num_select,
                                 num_init=num_init, num_local=num_local))
    return torch.cat(out, dim=1)


def _split_blocks(x: torch.Tensor, select_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, H, D] -> [B, H, Nb, l', D] (zero-padded to whole blocks), contiguous, in `dtype`."""
    B, T, H, D = x.shape
    Nb = math.ceil(T / select_size)
    x = torch.nn.functional.pad(x.to(dtype), (0, 0, 0, 0, 0, Nb * select_size - T))
    return x.reshape(B, Nb, select_size, H, D).permute(0, 3, 1, 2, 4).contiguous()


def _selected_tile(t0: int, scale: float, qt: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor,
                   idx_t: torch.Tensor) -> torch.Tensor:
    """Rows t0 .. t0+R-1 of selected attention via the union of the tile's selected blocks.

    qt [B, R, Hq, Dk], k_blocks [B, Hkv, Nb, l', Dk] / v_blocks [B, Hkv, Nb, l', Dv], idx_t [B, R, Hkv, n].
    Neighbouring queries mostly pick the same blocks, so the tile gathers each block it uses once
    (shared by its rows and the G heads of a group) and masks, per row, the blocks that row did not pick.
    """
    B, R, _, _ = qt.shape
    Hkv, Nb, ss, Dk = k_blocks.shape[1:]
    Dv, dev = v_blocks.shape[4], qt.device
    ids = idx_t.long().permute(0, 2, 1, 3)  # [B, Hkv, R, n]
    last_block = (t0 + R - 1) // ss  # blocks past it are in the future of every row of the tile
    valid = (ids >= 0) & (ids <= min(last_block, Nb - 1))
    used = torch.zeros(B, Hkv, Nb + 1, dtype=torch.bool, device=dev)
    used.scatter_(-1, torch.where(valid, ids, Nb).flatten(2), True)  # slot Nb collects the invalid ids
    used = used[..., :Nb]
    U = max(1, int(used.sum(dim=-1).max()))  # >= 1 so an all-empty tile still yields (zero) outputs
    blocks = torch.sort(used.to(torch.uint8), dim=-1, descending=True, stable=True).indices[..., :U]  # [B,Hkv,U]
    picked = (ids[..., :, None] == blocks[:, :, None, None, :]).any(dim=-2)  # [B, Hkv, R, U]
    pos = blocks[..., None] * ss + torch.arange(ss, device=dev)  # [B, Hkv, U, l']
    t = t0 + torch.arange(R, device=dev)
    mask = picked[..., None] & (pos[:, :, None] <= t[:, None, None])  # [B, Hkv, R, U, l'], causal
    rows = ((torch.arange(B, device=dev)[:, None, None] * Hkv + torch.arange(Hkv, device=dev)[:, None]) * Nb
            + blocks).flatten()  # rows of the flat [B*Hkv*Nb, l'*D] block tables
    k_u = k_blocks.flatten(0, 2).flatten(1).index_select(0, rows).reshape(B, Hkv, U * ss, Dk)
    v_u = v_blocks.flatten(0, 2).flatten(1).index_select(0, rows).reshape(B, Hkv, U * ss, Dv)
    return attend(qt, k_u.transpose(1, 2), v_u.transpose(1, 2), mask.flatten(-2)[:, :, None], scale,
                  need_lse=False)[0]


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *,
                       select_size: int, scale: float | None = None,
                       chunk_size: int = QUERY_TILE) -> torch.Tensor:
    """Chunked kernels.reference.selected_attention -> o [B, T, Hq, Dv].

    Rows per tile shrink below chunk_size when a tile's scores, at worst [B, Hq, rows, T] (every
    block in the union), would exceed SCORE_BUDGET elements.
    """
    B, T, Hq, _ = q.shape
    scale = resolve_scale(scale, q.shape[-1])
    ct = compute_dtype(q.dtype)
    k_blocks, v_blocks = _split_blocks(k, select_size, ct), _split_blocks(v, select_size, ct)
    rows = max(1, min(chunk_size, SCORE_BUDGET // (B * Hq * k_blocks.shape[2] * select_size)))
    outs = []
    for t0, t1 in _tiles(T, rows):
        outs.append(_run_tile(lambda qt, kb, vb, it, t0=t0: _selected_tile(t0, scale, qt, kb, vb, it),
                              q[:, t0:t1], k_blocks, v_blocks, idx[:, t0:t1]))
    return torch.cat(outs, dim=1)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int,
                     scale: float | None = None, chunk_size: int = QUERY_TILE) -> torch.Tensor:
    """Chunked kernels.reference.window_attention -> o [B, T, Hq, Dv]; a tile reads keys [t0-w+1, t1)."""
    T = q.shape[1]
    scale = resolve_scale(scale, q.shape[-1])

    def tile(t0: int, lo: int, qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
        t = t0 + torch.arange(qt.shape[1], device=qt.device)
        s = lo + torch.arange(kt.shape[1], device=qt.device)
        mask = (s[None, :] <= t[:, None]) & (s[None, :] > t[:, None] - window)  # [R, S]
        return attend(qt, kt, vt, mask, scale, need_lse=False)[0]

    outs = []
    for t0, t1 in _tiles(T, chunk_size):
        lo = max(0, t0 - window + 1)
        outs.append(_run_tile(lambda qt, kt, vt, t0=t0, lo=lo: tile(t0, lo, qt, kt, vt),
                              q[:, t0:t1], k[:, lo:t1], v[:, lo:t1]))
    return torch.cat(outs, dim=1)
