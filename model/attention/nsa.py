"""Native Sparse Attention (NSA, DeepSeek, arXiv 2502.11089) as a GPT attention module: `attention=nsa`.

The definition is /work/shared/NSA.md; docs/nsa.md explains the choices below at more length. Every query t
attends through three branches, mixed by per-head sigmoid gates computed from x_t:

    o_t = g_cmp * Attn(q_t, K_cmp, V_cmp) + g_slc * Attn(q_t, K_slc, V_slc) + g_win * Attn(q_t, K_win, V_win)

- cmp (compression): compressed token i = phi(k[i*d : i*d + l] + pe), visible once its whole block is;
- slc (selection): the n selection blocks of l' tokens with the most compression-branch attention
  (block 0 and the 2 most recent ones forced);
- win (window): the w most recent tokens.
The attention math is the four ops of `kernels` (Triton on GPU, vectorised PyTorch on CPU). This module owns
what is learned around them (projections, compression MLPs, gates), RoPE, the decoding cache and the sparsity
accounting.

Parameters. `wq`: one query projection shared by the three branches (Hq heads). `wkv`: keys and values per
branch, (cmp, slc, win) x (k, v) x Hkv heads, fused into one matmul; a single (k, v) set for all branches when
`shared_kv`. `phi_k`, `phi_v`: Linear(l*D, hidden) -> SiLU -> Linear(hidden, D) over a flattened block, shared
by the KV heads; `pe_k`, `pe_v` [l, D]: intra-block position embeddings. `w_gate`: Linear(C, 3*Hq) + sigmoid,
one gate per query head per branch. `wo`: output projection.

RoPE. Queries and the selection/window keys are rotated at their own positions, exactly like full attention.
Compressed keys are built from the *un-rotated* compression-branch keys (phi then sees content plus pe, and the
same block content maps to the same summary at any offset) and are then rotated at their block's last
position i*d + l - 1, the position at which the block becomes visible: the query-key distance
t - (i*d + l - 1) is >= 0, as for an ordinary causal key. Values are never rotated.

Decoding (`NSACache`). Preallocated rotated keys/values of the selection and window branches (one shared
buffer when `shared_kv`), the compressed keys/values so far, and the un-rotated compression-branch keys/values
of the still-incomplete next compressed block (< l tokens). Compressed token i is computed once, when the cache
reaches length i*d + l. Queries that follow a cached prefix (chunked prefill, T == 1 decoding) are passed to the
kernel ops with `q_start = start`, the position of their first row, against all cached keys: one code path for
prefill, chunked prefill and decoding, and a decoding step reads only the keys its query attends (visible
compressed tokens, n selected blocks, w window keys) instead of computing a whole sequence.

Sparsity. `attended_keys(T)` counts exactly from the definition the mean keys per query of each branch over
positions 0..T-1; `record_stats = True` makes every forward store the keys each query really attended in
`last_stats` (from the chosen block ids); `nsa_sparsity(model, T)` gives both for a whole GPT. `record_selection
= True` keeps the block ids every query of the latest forward chose (`selection`) and its gates (`gates`):
evaluation/selection.py and the training probes ask whether they cover a retrieval document's needle
(`needle_block_hits`), and how much the selected branch weighs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kernels import (
    check_nsa_sizes,
    compressed_attention_and_select,
    num_compressed_tokens,
    runs_triton_decode,
    selected_and_window_attention,
)
from model.attention import register_attention
from model.attention.base import Attention, DecodePosition
from model.config import AttentionConfig, ModelConfig
from model.rope import Rotary

BRANCHES = ("cmp", "slc", "win")


def keys_per_position(t: torch.Tensor, a: AttentionConfig) -> dict[str, torch.Tensor]:
    """Keys each NSA branch attends to for queries at positions t [N] (int64), from the definition.

    cmp: compressed tokens whose block ends at or before t. win: min(t + 1, w). slc: the query sees
    t // l' + 1 blocks and picks m = min(n, that) of them (every visible block is a candidate, so all
    slots fill once n blocks are visible); all are full blocks of l' keys except the one holding t, which
    has t % l' + 1 visible keys and is forced when num_local >= 1. With num_local == 0 and m below the
    visible count that block may or may not be picked: m * l' is then an upper bound.
    """
    ls = a.select_block
    cmp = ((t + 1 - a.compress_block) // a.compress_stride + 1).clamp(min=0)  # num_compressed_tokens(t + 1)
    win = (t + 1).clamp(max=a.window)
    visible = t // ls + 1
    m = visible.clamp(max=a.num_select)
    with_current = (m - 1) * ls + t % ls + 1
    slc = with_current if a.num_local >= 1 else torch.where(m == visible, with_current, m * ls)
    return {"cmp": cmp, "slc": slc, "win": win}


# kernels.check_nsa_sizes names sizes as the kernel interface does; errors are re-worded with config names.
_CONFIG_NAMES = {
    "n_kv_heads": "model.n_kv_head",
    "n_heads": "model.n_head",
    "block_size": "attention.compress_block",
    "stride": "attention.compress_stride",
    "select_size": "attention.select_block",
    "num_select": "attention.num_select",
    "num_init": "attention.num_init",
    "num_local": "attention.num_local",
    "window": "attention.window",
}


@dataclass
class NSACache:
    """Decoding state of one NSA layer holding `length` tokens.

    k_slc, v_slc, k_win, v_win: [B, max_len, Hkv, D] keys (RoPE applied) / values read by the selection and
        window branches; the same tensors for both branches when shared_kv.
    k_cmp, v_cmp: [B, max_cmp, Hkv, D] compressed keys (rotated) / values; the first `num_cmp` are filled.
    tail_k, tail_v: [B, length - num_cmp * d, Hkv, D] un-rotated compression-branch keys / values of the
        positions from num_cmp * d on (the incomplete next block, < l tokens): all the next tokens still need.
    ring_k, ring_v: [B, l, Hkv, D] the same for `decode_step` (position p in slot p % l), filled from the tail
        by its first call; k_cmp/v_cmp hold one spare row past the last compressed token, where a step that
        completes no block writes (fixed shapes for CUDA graphs).
    """

    k_slc: torch.Tensor
    v_slc: torch.Tensor
    k_win: torch.Tensor
    v_win: torch.Tensor
    k_cmp: torch.Tensor
    v_cmp: torch.Tensor
    tail_k: torch.Tensor
    tail_v: torch.Tensor
    length: int = 0
    num_cmp: int = 0
    ring_k: torch.Tensor | None = None
    ring_v: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.k_slc.shape[1]


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


@register_attention("nsa")
class NativeSparseAttention(Attention):
    def __init__(self, model_cfg: ModelConfig, attn_cfg: AttentionConfig, layer_idx: int) -> None:
        super().__init__(model_cfg, attn_cfg, layer_idx)
        C, D = model_cfg.n_embd, model_cfg.head_size
        self.n_head, self.n_kv_head, self.head_dim = model_cfg.n_head, model_cfg.n_kv_head, D
        self.l, self.d = attn_cfg.compress_block, attn_cfg.compress_stride
        self.n_kv_sets = 1 if attn_cfg.shared_kv else len(BRANCHES)
        hidden = attn_cfg.compress_hidden or 2 * D
        self.wq = nn.Linear(C, self.n_head * D, bias=False)
        self.wkv = nn.Linear(C, self.n_kv_sets * 2 * self.n_kv_head * D, bias=False)
        self.phi_k = _mlp(self.l * D, hidden, D)
        self.phi_v = _mlp(self.l * D, hidden, D)
        self.pe_k = nn.Parameter(torch.empty(self.l, D))
        self.pe_v = nn.Parameter(torch.empty(self.l, D))
        self.w_gate = nn.Linear(C, len(BRANCHES) * self.n_head)
        self.wo = nn.Linear(self.n_head * D, C, bias=False)
        self.record_stats = False  # when True, forward stores the keys each query really attended in last_stats
        self.last_stats: dict[str, float] | None = None
        self.record_selection = False  # when True, forward keeps every query's selected block ids and gates
        self.selection: torch.Tensor | None = None  # [B, T, Hkv, num_select], ascending, -1 padded
        self.gates: torch.Tensor | None = None  # [B, T, Hq, 3]: the branch gates (cmp, slc, win)

    @classmethod
    def check_config(cls, model_cfg: ModelConfig, attn_cfg: AttentionConfig) -> None:
        a = attn_cfg
        try:  # the kernels hold the one definition of NSA's size rules
            check_nsa_sizes(n_heads=model_cfg.n_head, n_kv_heads=model_cfg.n_kv_head, block_size=a.compress_block,
                            stride=a.compress_stride, select_size=a.select_block, num_select=a.num_select,
                            num_init=a.num_init, num_local=a.num_local, window=a.window)
        except ValueError as e:
            msg = str(e).removeprefix("NSA sizes: ")
            msg = re.sub(r"\b(" + "|".join(_CONFIG_NAMES) + r")\b", lambda m: _CONFIG_NAMES[m.group(1)], msg)
            raise ValueError(f"attention=nsa: {msg}") from None
        if a.compress_hidden < 0:
            raise ValueError(f"attention=nsa: attention.compress_hidden={a.compress_hidden} must be >= 0 "
                             "(0 picks 2 * head size)")

    # ------------------------------------------------------------------------------------------------------
    # forward

    def forward(self, x: torch.Tensor, rotary: Rotary, cache: NSACache | None = None) -> torch.Tensor:
        """x [B, T, C] at positions start .. start+T-1 (start = cache.length, or 0 without a cache) -> [B, T, C]."""
        start = cache.length if cache is not None else 0
        q, k_c, v_c, k_s, v_s, k_w, v_w = self._project(x, lambda t: rotary(t, start))
        if cache is None:
            k_cmp, v_cmp = self.compress(k_c, v_c, rotary, first=0)
        else:
            k_cmp, v_cmp, k_s, v_s, k_w, v_w = self._extend_cache(cache, rotary, k_c, v_c, k_s, v_s, k_w, v_w)
        return self._gate(x, *self._branches(q, k_cmp, v_cmp, k_s, v_s, k_w, v_w, start))

    def _project(self, x: torch.Tensor, rotate: Callable[[torch.Tensor], torch.Tensor]):
        """(q, k_c, v_c, k_s, v_s, k_w, v_w), each [B, T, H, D], of x [B, T, C]: q and the selection / window keys
        rotated by rotate(t) (their positions), the compression branch's keys left as they are (phi comes first)."""
        B, T, _ = x.shape
        q = rotate(self.wq(x).view(B, T, self.n_head, self.head_dim))
        kv = self.wkv(x).view(B, T, self.n_kv_sets, 2, self.n_kv_head, self.head_dim)
        sets = [kv[:, :, i].unbind(2) for i in range(self.n_kv_sets)]
        (k_c, v_c), (k_s, v_s), (k_w, v_w) = sets * 3 if self.n_kv_sets == 1 else sets
        k_s = rotate(k_s)
        k_w = k_s if self.n_kv_sets == 1 else rotate(k_w)
        return q, k_c, v_c, k_s, v_s, k_w, v_w

    def _gate(self, x: torch.Tensor, o_cmp: torch.Tensor, o_slc: torch.Tensor, o_win: torch.Tensor) -> torch.Tensor:
        """The gated sum of the three branch outputs [B, T, Hq, D] (gates from x [B, T, C]), projected -> [B, T, C]."""
        B, T, _ = x.shape
        g = torch.sigmoid(self.w_gate(x)).view(B, T, self.n_head, len(BRANCHES), 1)
        if self.record_selection:
            self.gates = g[..., 0].detach()
        o = torch.addcmul(torch.addcmul(g[:, :, :, 0] * o_cmp, g[:, :, :, 1], o_slc), g[:, :, :, 2], o_win)  # 3 ops
        return self.wo(o.reshape(B, T, -1))

    def compress(
        self, k: torch.Tensor, v: torch.Tensor, rotary: Rotary, first: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compressed tokens of a stretch of un-rotated compression-branch keys/values.

        k, v [B, S, Hkv, D] hold positions first*d .. first*d + S - 1. Returns (k_cmp, v_cmp)
        [B, num_compressed_tokens(S), Hkv, D]: compressed tokens first, first + 1, ... with
        k_cmp[i] = phi_k(flatten(k[i*d : i*d + l] + pe_k)) rotated at the block's last position, likewise
        v_cmp with phi_v and pe_v (not rotated).
        """
        B, S, H, D = k.shape
        n = num_compressed_tokens(S, self.l, self.d)
        if n == 0:
            return k.new_zeros(B, 0, H, D), v.new_zeros(B, 0, H, D)
        k_cmp, v_cmp = self._compress_unrotated(k, v, n)
        positions = (first + torch.arange(n, device=k.device)) * self.d + self.l - 1
        return rotary.at(k_cmp, positions), v_cmp

    def _compress_unrotated(self, k: torch.Tensor, v: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """phi_k / phi_v of the first n blocks (l tokens every d) of k, v [B, S, Hkv, D] -> [B, n, Hkv, D] each."""
        def blocks(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:  # [B, n, H, l * D]
            x = x[:, : (n - 1) * self.d + self.l].unfold(1, self.l, self.d)  # [B, n, H, D, l] (a view)
            return (x.transpose(-1, -2) + pe).flatten(-2)

        return self.phi_k(blocks(k, self.pe_k)), self.phi_v(blocks(v, self.pe_v))

    def _branches(self, q, k_cmp, v_cmp, k_s, v_s, k_w, v_w, start: int):
        """The three branch outputs [B, T, Hq, D] of queries q [B, T, Hq, D] at positions start.. against keys
        at positions 0.. (k_s, k_w: [B, start + T, Hkv, D]; k_cmp: the compressed tokens of that length)."""
        a = self.attn_cfg
        k_cmp, v_cmp, k_s, v_s, k_w, v_w = (t.to(q.dtype) for t in (k_cmp, v_cmp, k_s, v_s, k_w, v_w))
        # each pair: the two ops, or fewer launches for a decoding step (kernels/__init__.py)
        o_cmp, _, idx = compressed_attention_and_select(q, k_cmp, v_cmp, block_size=self.l, stride=self.d,
                                                        select_size=a.select_block, num_select=a.num_select,
                                                        num_init=a.num_init, num_local=a.num_local, q_start=start)
        o_slc, o_win = selected_and_window_attention(q, k_s, v_s, idx, k_w, v_w, select_size=a.select_block,
                                                     window=a.window, q_start=start)
        if self.record_stats:
            self.last_stats = self._measured_keys(idx, start)
        if self.record_selection:
            self.selection = idx.detach()
        return o_cmp, o_slc, o_win

    # ------------------------------------------------------------------------------------------------------
    # decoding

    def new_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> NSACache:
        def zeros(n: int) -> torch.Tensor:
            return torch.zeros(batch_size, n, self.n_kv_head, self.head_dim, device=device, dtype=dtype)

        k_slc, v_slc = zeros(max_len), zeros(max_len)
        k_win, v_win = (k_slc, v_slc) if self.n_kv_sets == 1 else (zeros(max_len), zeros(max_len))
        n_cmp = num_compressed_tokens(max_len, self.l, self.d) + 1  # + decode_step's spare row
        return NSACache(k_slc, v_slc, k_win, v_win, zeros(n_cmp), zeros(n_cmp), zeros(0), zeros(0))

    def _extend_cache(self, cache: NSACache, rotary: Rotary, k_c, v_c, k_s, v_s, k_w, v_w):
        """Append T new tokens (k_s, k_w rotated; k_c un-rotated) and the compressed tokens whose blocks they
        complete. Returns (k_cmp, v_cmp, k_s, v_s, k_w, v_w) of all cached positions so far."""
        start, end = cache.length, cache.length + k_s.shape[1]
        if end > cache.max_len:
            raise ValueError(f"NSA cache is full ({cache.max_len} tokens): create it with a larger max_len")
        cache.k_slc[:, start:end], cache.v_slc[:, start:end] = k_s, v_s
        if cache.k_win is not cache.k_slc:
            cache.k_win[:, start:end], cache.v_win[:, start:end] = k_w, v_w
        # the tail starts at position num_cmp * d (a multiple of d), so its blocks are the next compressed tokens
        tail_k = torch.cat([cache.tail_k, k_c.to(cache.tail_k.dtype)], dim=1)
        tail_v = torch.cat([cache.tail_v, v_c.to(cache.tail_v.dtype)], dim=1)
        new_k, new_v = self.compress(tail_k, tail_v, rotary, first=cache.num_cmp)
        n_new = new_k.shape[1]
        cache.k_cmp[:, cache.num_cmp : cache.num_cmp + n_new] = new_k
        cache.v_cmp[:, cache.num_cmp : cache.num_cmp + n_new] = new_v
        cache.num_cmp += n_new
        cache.tail_k, cache.tail_v = tail_k[:, n_new * self.d :], tail_v[:, n_new * self.d :]
        cache.length = end
        c = cache.num_cmp
        return (cache.k_cmp[:, :c], cache.v_cmp[:, :c], cache.k_slc[:, :end], cache.v_slc[:, :end],
                cache.k_win[:, :end], cache.v_win[:, :end])

    def decode_step(self, x: torch.Tensor, rotary: Rotary, cache: NSACache, step: DecodePosition) -> torch.Tensor:
        """x [B, 1, C] at the position held in step.pos (int64 [1], on x's device) -> [B, 1, C], with every shape
        and kernel argument fixed from step to step (the step can be captured in a CUDA graph and replayed): the
        cache is written at pos, the compressed token a step completes is computed every step and written to
        its row or, when the step completes none, to the spare row. The cache must hold positions 0 .. pos - 1
        (a prefill forward); cache.length is not advanced. The first call fills the compression ring from the
        prefill's tail, so it must run outside a capture."""
        B = x.shape[0]
        blk, d, pos = self.l, self.d, step.pos
        if cache.ring_k is None:
            start = cache.num_cmp * d
            slots = torch.arange(start, start + cache.tail_k.shape[1], device=x.device) % blk
            cache.ring_k = cache.tail_k.new_zeros(B, blk, *cache.tail_k.shape[2:]).index_copy_(1, slots, cache.tail_k)
            cache.ring_v = cache.tail_v.new_zeros(B, blk, *cache.tail_v.shape[2:]).index_copy_(1, slots, cache.tail_v)
        n_rows = cache.k_cmp.shape[1]
        slot, order, row = step.derived(("nsa", blk, d, n_rows), lambda p: self._ring_indices(p, n_rows))
        q, k_c, v_c, k_s, v_s, k_w, v_w = self._project(x, lambda t: t)  # RoPE below, in one pass
        dt = cache.k_slc.dtype
        cache.ring_k.index_copy_(1, slot, k_c.to(dt))
        cache.ring_v.index_copy_(1, slot, v_c.to(dt))
        new_k, new_v = self._compress_unrotated(cache.ring_k[:, order], cache.ring_v[:, order], 1)
        # The query, the selection / window keys and the compressed key of the block ending at pos all rotate at
        # pos: one RoPE pass over their concatenation, where each alone is a dozen small kernels of the step
        keys = [k_s] if self.n_kv_sets == 1 else [k_s, k_w]
        rotated = step.rotate(rotary, torch.cat([q, *keys, new_k], dim=2))
        q, *keys, new_k = rotated.split([self.n_head] + [self.n_kv_head] * (len(keys) + 1), dim=2)
        k_s, k_w = keys[0], keys[-1]
        for buf, new in ((cache.k_slc, k_s), (cache.v_slc, v_s), (cache.k_win, k_w), (cache.v_win, v_w)):
            buf.index_copy_(1, pos, new.to(dt))  # the shared_kv sets write the same tensors twice: harmless
        cache.k_cmp.index_copy_(1, row, new_k.to(dt))
        cache.v_cmp.index_copy_(1, row, new_v.to(dt))
        return self._gate(x, *self._branches_at(q, cache, pos))

    def _ring_indices(self, pos: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For decode_step at pos (the same in every layer): the ring slot of pos, the ring's slots in position
        order (positions pos - l + 1 .. pos), and the row of the n_rows compressed-token rows that the block
        ending at pos fills (the spare row, the last, when no block ends at pos)."""
        blk, d = self.l, self.d
        slot = pos % blk
        order = (pos + 1 + torch.arange(blk, device=pos.device)) % blk
        first = pos + 1 - blk  # first position of the block ending at pos
        done = (first >= 0) & (first % d == 0)
        return slot, order, torch.where(done, first.div(d, rounding_mode="floor"), n_rows - 1)

    def _branches_at(self, q: torch.Tensor, cache: NSACache, pos: torch.Tensor):
        """The three branch outputs [B, 1, Hq, D] of decode_step: the Triton kernels that read the position on the
        device where they run, else the ops on the visible slices (the position read on the host: CPU only)."""
        a, max_pos = self.attn_cfg, cache.max_len - 1
        k_cmp, v_cmp, k_s, v_s, k_w, v_w = (t.to(q.dtype) for t in (cache.k_cmp, cache.v_cmp, cache.k_slc,
                                                                    cache.v_slc, cache.k_win, cache.v_win))
        if runs_triton_decode(q):
            from kernels import triton_decode as td

            sizes = dict(block_size=self.l, stride=self.d)
            o_cmp, _, idx = td.compressed_attention_and_select_at(q, k_cmp, v_cmp, pos, **sizes,
                                                                  select_size=a.select_block, num_select=a.num_select,
                                                                  num_init=a.num_init, num_local=a.num_local,
                                                                  max_pos=max_pos)
            o_slc, o_win = td.selected_and_window_attention_at(q, k_s, v_s, idx, k_w, v_w, pos,
                                                               select_size=a.select_block, window=a.window,
                                                               max_pos=max_pos)
            return o_cmp, o_slc, o_win
        t = int(pos)
        c = num_compressed_tokens(t + 1, self.l, self.d)
        return self._branches(q, k_cmp[:, :c], v_cmp[:, :c], k_s[:, :t + 1], v_s[:, :t + 1], k_w[:, :t + 1],
                              v_w[:, :t + 1], t)

    # ------------------------------------------------------------------------------------------------------
    # sparsity and FLOPs

    def _keys_per_position(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return keys_per_position(t, self.attn_cfg)

    def attended_keys(self, seq_len: int) -> dict[str, float]:
        """Mean keys per query of each branch ('cmp', 'slc', 'win') and their sum 'total' over positions
        0..seq_len-1. A key seen by two branches (window and a local selected block) counts twice: it is
        computed twice. Exact when num_local >= 1 (see _keys_per_position)."""
        if seq_len < 1:
            raise ValueError(f"attended_keys: seq_len={seq_len} must be positive")
        per_t = self._keys_per_position(torch.arange(seq_len, dtype=torch.int64))
        out = {k: v.double().mean().item() for k, v in per_t.items()}
        out["total"] = sum(out[b] for b in BRANCHES)
        return out

    @torch.no_grad()
    def _measured_keys(self, idx: torch.Tensor, start: int) -> dict[str, float]:
        """Mean keys per query (over batch, positions, KV groups) each branch really attended in this forward:
        idx [B, T, Hkv, n] are the chosen blocks of the queries at positions start .. start + T - 1."""
        ls = self.attn_cfg.select_block
        t = torch.arange(start, start + idx.shape[1], device=idx.device)
        ids = idx.long().sort(dim=-1).values
        repeat = torch.zeros_like(ids, dtype=torch.bool)
        repeat[..., 1:] = ids[..., 1:] == ids[..., :-1]  # a block chosen twice is attended once
        in_block = (t[None, :, None, None] - ids * ls + 1).clamp(0, ls)  # its keys at or before t
        chosen = (ids >= 0) & ~repeat & (ids * ls <= t[None, :, None, None])
        slc = torch.where(chosen, in_block, 0).sum(-1).double().mean().item()
        analytic = self._keys_per_position(t)  # cmp and win do not depend on the data
        out = {"cmp": analytic["cmp"].double().mean().item(), "slc": slc,
               "win": analytic["win"].double().mean().item()}
        out["total"] = sum(out[b] for b in BRANCHES)
        out["slc_blocks"] = chosen.sum(-1).double().mean().item()
        out[f"slc_blocks_shared{SHARE_TILE}"] = _blocks_shared(torch.where(chosen, ids, -1), SHARE_TILE)
        return out

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: projections and gates, the compression MLPs (run once per compressed
        token, i.e. about once per d tokens), and QK^T + PV over the keys each branch really attends to. The
        selection scores reuse the compression branch's probabilities (a fused kernel recomputes q.k_cmp, an
        implementation cost not counted as model FLOPs)."""
        proj = 2 * sum(m.weight.numel() for m in (self.wq, self.wkv, self.w_gate, self.wo))
        phi_weights = sum(m.weight.numel() for phi in (self.phi_k, self.phi_v) for m in (phi[0], phi[2]))
        n_cmp = num_compressed_tokens(seq_len, self.l, self.d)
        phi = 2 * phi_weights * self.n_kv_head * n_cmp / seq_len
        return proj + phi + 2 * 2 * self.n_head * self.head_dim * self.attended_keys(seq_len)["total"]

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.wq.weight, std=std)
        nn.init.normal_(self.wkv.weight, std=std)
        nn.init.normal_(self.wo.weight, std=out_std)
        # gates: sigmoid(~0) = 0.5, every branch starts half-open
        nn.init.normal_(self.w_gate.weight, std=std)
        nn.init.zeros_(self.w_gate.bias)
        # compression MLPs: fan-in scaling keeps compressed tokens at the raw keys' scale (the block's
        # l*D inputs are not normalised like the residual stream, so the model's std does not apply)
        for phi in (self.phi_k, self.phi_v):
            for layer in (phi[0], phi[2]):
                nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
                nn.init.zeros_(layer.bias)
        nn.init.normal_(self.pe_k, std=std)
        nn.init.normal_(self.pe_v, std=std)


def needle_block_hits(ids: torch.Tensor, start: int, end: int, select_size: int) -> torch.Tensor:
    """ids [..., n] chosen selection-block ids (-1: none) -> bool [...]: whether a chosen block (tokens
    [id * select_size, (id + 1) * select_size)) overlaps the tokens [start, end) (e.g. a retrieval needle)."""
    if end <= start:
        raise ValueError(f"needle_block_hits: empty span [{start}, {end})")
    first, last = start // select_size, (end - 1) // select_size
    return ((ids >= first) & (ids <= last)).any(dim=-1)


def nsa_layers(model: nn.Module) -> list[NativeSparseAttention]:
    return [m for m in model.modules() if isinstance(m, NativeSparseAttention)]


def set_selection_recording(layers: list[NativeSparseAttention], on: bool) -> None:
    """Turn record_selection on or off in these layers; turning it off also drops what they recorded."""
    for layer in layers:
        layer.record_selection = on
        if not on:
            layer.selection = layer.gates = None


SHARE_TILE = 4  # consecutive query positions that would share their selected blocks' loads


def _blocks_shared(ids: torch.Tensor, tile: int) -> float:
    """Distinct selected blocks per query when `tile` consecutive positions load the union of their blocks once:
    ids [B, T, Hkv, n] (-1 = none). Equal to the blocks per query when neighbours never agree, 1/tile of it when
    they always do: how much a selected-attention kernel that shares loads across positions could save."""
    B, T, H, n = ids.shape
    pad = -T % tile
    x = torch.cat([ids, ids.new_full((B, pad, H, n), -1)], 1) if pad else ids
    x = x.permute(0, 2, 1, 3).reshape(B, H, (T + pad) // tile, tile * n).sort(-1).values
    distinct = (x[..., :1] >= 0).sum(-1) + ((x[..., 1:] != x[..., :-1]) & (x[..., 1:] >= 0)).sum(-1)
    return distinct.sum().item() / (B * H * T)


def nsa_sparsity(model: nn.Module, seq_len: int, tokens: torch.Tensor | None = None) -> dict[str, float]:
    """How sparse a GPT's NSA attention is at length `seq_len`.

    Returns the analytic mean keys per query 'cmp', 'slc', 'win', 'total' (as `attended_keys`), 'dense' =
    (seq_len + 1) / 2 (full causal attention) and 'fraction' = total / dense. With `tokens` [B, seq_len]
    it also runs one no-grad forward with `record_stats` on every NSA layer and adds the measured
    'measured_<branch>', 'measured_total', 'measured_fraction' (mean over layers), and the selected blocks per
    query 'measured_slc_blocks' next to 'measured_slc_blocks_shared4' (the distinct blocks per query when 4
    consecutive positions share their loads: what a load-sharing kernel could save).
    """
    layers = nsa_layers(model)
    if not layers:
        raise ValueError("nsa_sparsity: the model has no NSA attention layer (build it with attention.name='nsa')")
    out = layers[0].attended_keys(seq_len)  # every layer shares one attention config
    out["dense"] = (seq_len + 1) / 2
    out["fraction"] = out["total"] / out["dense"]
    if tokens is None:
        return out
    if tokens.dim() != 2 or tokens.shape[1] != seq_len:
        raise ValueError(f"nsa_sparsity: tokens must be [B, seq_len={seq_len}], got {tuple(tokens.shape)}")
    try:
        for layer in layers:
            layer.record_stats, layer.last_stats = True, None
        with torch.no_grad():
            model(tokens)
        stats = [layer.last_stats for layer in layers]
    finally:
        for layer in layers:
            layer.record_stats = False
    for key in (*BRANCHES, "total", "slc_blocks", f"slc_blocks_shared{SHARE_TILE}"):
        out[f"measured_{key}"] = sum(s[key] for s in stats) / len(stats)
    out["measured_fraction"] = out["measured_total"] / out["dense"]
    return out
