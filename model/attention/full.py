"""Full causal attention with GQA through `F.scaled_dot_product_attention` (flash / cuDNN kernels on GPU)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import register_attention
from model.attention.base import Attention, DecodePosition
from model.config import AttentionConfig, ModelConfig
from model.rope import Rotary


@dataclass
class KVCache:
    """Preallocated keys/values [B, max_len, Hkv, D] of one layer; `length` tokens are filled."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, T, Hkv, D] after the cached tokens; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[1]
        if end > self.k.shape[1]:
            raise ValueError(f"KV cache is full ({self.k.shape[1]} tokens): create it with a larger max_len")
        self.k[:, start:end] = k
        self.v[:, start:end] = v
        self.length = end
        return self.k[:, :end], self.v[:, :end]


def sdpa_bthd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int = 0) -> torch.Tensor:
    """Causal GQA attention on BTHD tensors: q [B, Tq, Hq, D] at positions q_start.., k/v [B, Tk, Hkv, D] at 0..
    Returns [B, Tq, Hq, D]."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if q_start == 0 and Tq == Tk:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif Tq == 1 and q_start == Tk - 1:  # one decoding step sees every key: no mask (a mask is slow on CPU)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)
    else:  # queries after a cached prefix: query i sees keys 0 .. q_start + i
        mask = (
            torch.arange(Tk, device=q.device)[None, :] <= torch.arange(q_start, q_start + Tq, device=q.device)[:, None]
        )
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return o.transpose(1, 2)


@register_attention("full")
class FullAttention(Attention):
    def __init__(self, model_cfg: ModelConfig, attn_cfg: AttentionConfig, layer_idx: int) -> None:
        super().__init__(model_cfg, attn_cfg, layer_idx)
        C, D = model_cfg.n_embd, model_cfg.head_size
        self.n_head, self.n_kv_head, self.head_dim = model_cfg.n_head, model_cfg.n_kv_head, D
        # q, k and v from one matmul (rows: Hq heads of q, then Hkv of k, then Hkv of v): one larger GEMM runs
        # closer to the tensor cores' peak than two (measured +0.7% on the 124M, docs/benchmarks.md), and the
        # backward sums no partial input gradients.
        self.wqkv = nn.Linear(C, (self.n_head + 2 * self.n_kv_head) * D, bias=False)
        self.wo = nn.Linear(self.n_head * D, C, bias=False)
        self._register_load_state_dict_pre_hook(_merge_split_qkv)

    def forward(self, x: torch.Tensor, rotary: Rotary, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        start = cache.length if cache is not None else 0
        q, k, v = self._project(x, lambda t: rotary(t, start))
        if cache is not None:
            k, v = cache.append(k, v)
        o = sdpa_bthd(q, k, v, q_start=start)
        return self.wo(o.reshape(B, T, -1))

    def _project(self, x: torch.Tensor,
                 rotate: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, T, Hq, D], k, v [B, T, Hkv, D] of x [B, T, C], q and k rotated by rotate(t) (their positions)."""
        B, T, _ = x.shape
        qkv = self.wqkv(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)
        q, k, v = qkv.split((self.n_head, self.n_kv_head, self.n_kv_head), dim=2)
        return rotate(q), rotate(k), v

    def decode_step(self, x: torch.Tensor, rotary: Rotary, cache: KVCache, step: DecodePosition) -> torch.Tensor:
        """See Attention.decode_step: attends over the whole cache with the keys past pos masked out."""
        B, max_len = x.shape[0], cache.k.shape[1]
        q, k, v = self._project(x, lambda t: step.rotate(rotary, t))
        cache.k.index_copy_(1, step.pos, k.to(cache.k.dtype))
        cache.v.index_copy_(1, step.pos, v.to(cache.v.dtype))
        visible = step.derived(("visible", max_len),  # [1 query, max_len keys]
                               lambda p: (torch.arange(max_len, device=p.device) <= p)[None, :])
        q, k, v = (t.transpose(1, 2) for t in (q, cache.k.to(q.dtype), cache.v.to(q.dtype)))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=q.shape[1] != k.shape[1])
        return self.wo(o.transpose(1, 2).reshape(B, 1, -1))

    def new_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (batch_size, max_len, self.n_kv_head, self.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def attended_keys(self, seq_len: int) -> dict[str, float]:
        mean = (seq_len + 1) / 2  # query t sees t + 1 keys
        return {"full": mean, "total": mean}

    def flops_per_token(self, seq_len: int) -> float:
        proj = 2 * sum(m.weight.numel() for m in (self.wqkv, self.wo))
        # QK^T and PV: 2 FLOPs per multiply-add, head_dim each, for every attended key and query head.
        return proj + 2 * 2 * self.n_head * self.head_dim * self.attended_keys(seq_len)["total"]

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.wqkv.weight, std=std)
        nn.init.normal_(self.wo.weight, std=out_std)


def _merge_split_qkv(state_dict: dict, prefix: str, *args) -> None:
    """Load a checkpoint written before q, k and v shared one projection: its wq [Hq*D, C] and wkv [2*Hkv*D, C]
    (k rows, then v rows) stacked are wqkv's rows in order."""
    if prefix + "wq.weight" in state_dict and prefix + "wkv.weight" in state_dict:
        state_dict[prefix + "wqkv.weight"] = torch.cat(
            [state_dict.pop(prefix + "wq.weight"), state_dict.pop(prefix + "wkv.weight")])
