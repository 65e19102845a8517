"""The GPT: token embedding -> n_layer x (RMSNorm, attention, RMSNorm, SwiGLU MLP) -> RMSNorm -> logits.

Attention is whatever `attention.name` registers (model/attention/): this file never names a type.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import Attention, attention_class, build_attention
from model.attention.base import DecodePosition
from model.config import AttentionConfig, ModelConfig
from model.loss import linear_cross_entropy
from model.rope import Rotary


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm computed in float32 with the float32 weight, returned in the input's dtype. With a bf16 residual
    stream (model.residual_dtype=compute) the output is rounded once, as the float32 stream's is by the matmul
    after it, and the learnt gains are not rounded to bf16 (near 1.0 its steps of 2^-8 to 2^-7 are larger than an
    optimizer step); compiled, the upcast happens in registers, so no pass reads or writes more bytes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        math_dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64
        weight = None if self.weight is None else self.weight.to(math_dtype)
        return F.rms_norm(x.to(math_dtype), self.normalized_shape, weight, self.eps).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_cfg: AttentionConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn: Attention = build_attention(cfg, attn_cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.n_embd, cfg.hidden_dim)

    def forward(self, x: torch.Tensor, rotary: Rotary, cache: Any | None = None,
                step: DecodePosition | None = None) -> torch.Tensor:
        """With `step` (a decoding step's position) the attention takes its fixed-shape decode_step."""
        h = self.attn_norm(x)
        x = x + (self.attn(h, rotary, cache) if step is None else self.attn.decode_step(h, rotary, cache, step))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_cfg: AttentionConfig) -> None:
        super().__init__()
        cfg.validate()
        attention_class(attn_cfg).check_config(cfg, attn_cfg)
        self.cfg, self.attn_cfg = cfg, attn_cfg
        self.vocab_size = cfg.padded_vocab()
        self.embed = nn.Embedding(self.vocab_size, cfg.n_embd)
        self.rotary = Rotary(cfg.head_size, cfg.rope_base, cfg.max_seq_len)
        self.blocks = nn.ModuleList(Block(cfg, attn_cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, self.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # Recompute each block's activations in the backward pass instead of storing them (set by the
        # trainer from train.activation_checkpointing): long contexts fit at the cost of ~1 extra forward.
        self.checkpoint_blocks = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) everywhere; residual-branch outputs scaled by 1/sqrt(2 * n_layer) (GPT-2 style) so
        the residual stream's variance does not grow with depth."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layer)
        nn.init.normal_(self.embed.weight, std=std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=std)
        for block in self.blocks:
            block.attn.init_weights(std, out_std)
            nn.init.normal_(block.mlp.w_gate_up.weight, std=std)
            nn.init.normal_(block.mlp.w_down.weight, std=out_std)
            block.attn_norm.reset_parameters()
            block.mlp_norm.reset_parameters()
        self.norm.reset_parameters()
        self.rotary.reset_parameters()

    def embed_tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] -> the residual stream [B, T, C]: float32 embeddings, or in the autocast dtype when
        model.residual_dtype is "compute" and autocast is on."""
        x = self.embed(idx)
        if self.cfg.residual_dtype == "compute" and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        return x

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, caches: list[Any] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx [B, T] token ids (following the caches' tokens if given) -> (logits [B, T, V], loss).

        Without `targets` the logits are float32 and loss is None. With `targets` [B, T] the loss is the mean
        cross-entropy (targets == -1 ignored, computed in float32 or float64) and the logits stay in the compute dtype:
        a float32 copy of [B, T, V] would be the largest tensor of a training step, written and read for nothing.
        With `targets` and `cfg.loss_chunk > 0` the logits are None: the loss comes from the fused lm_head +
        cross-entropy (model/loss.py), which never builds them.
        """
        x = self.embed_tokens(idx)
        for i, block in enumerate(self.blocks):
            if self.checkpoint_blocks and self.training and caches is None:
                x = checkpoint(block, x, self.rotary, use_reentrant=False)
            else:
                x = block(x, self.rotary, caches[i] if caches is not None else None)
        x = self.norm(x)
        if targets is not None and self.cfg.loss_chunk > 0:
            # self.lm_head.weight is the embedding matrix when tied: its gradient flows to the shared parameter.
            h, y = x.flatten(0, 1), targets.reshape(-1)
            return None, linear_cross_entropy(h, self.lm_head.weight, y, self.cfg.loss_chunk)
        logits = self.lm_head(x)
        if targets is None:
            return logits.float(), None
        logits_f = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays
        loss = F.cross_entropy(logits_f, targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_caches(self, batch_size: int, max_len: int) -> list[Any]:
        """One empty decoding cache per layer on the model's device, in the dtype the attention computes in:
        the autocast dtype when autocast is on (so no step converts the whole cache), else the weights'."""
        p = self.embed.weight
        dtype = p.dtype
        if torch.is_autocast_enabled(p.device.type):
            dtype = torch.get_autocast_dtype(p.device.type)
        self.rotary.ensure_length(max_len)
        return [b.attn.new_cache(batch_size, max_len, p.device, dtype) for b in self.blocks]

    @torch.no_grad()
    def decode_step(self, tok: torch.Tensor, caches: list[Any], pos: torch.Tensor) -> torch.Tensor:
        """tok [B, 1] at the position held in pos (int64 [1] on the device) -> float32 logits [B, V]: one decoding
        step whose shapes and kernel arguments stay fixed from step to step, so that it can be captured in a CUDA
        graph. The caches hold positions 0 .. pos - 1 (a prefill forward) and are written at pos."""
        x = self.embed_tokens(tok)
        step = DecodePosition(pos)  # what the layers derive from pos, computed once
        for block, cache in zip(self.blocks, caches):
            x = block(x, self.rotary, cache, step)
        return self.lm_head(self.norm(x))[:, -1].float()

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        cuda_graph: bool = False,
    ) -> torch.Tensor:
        """Continue prompts idx [B, T0] by up to max_new_tokens tokens with a KV cache -> [B, T0 + new].

        temperature 0 is greedy; otherwise sample from softmax(logits / temperature), restricted to the top_k
        most likely tokens when top_k is set. Rows that produced `eos_id` keep emitting it; generation stops
        early once every row has. cuda_graph (CUDA, greedy): after the prefill, one decoding step (decode_step)
        is captured in a CUDA graph and replayed for every further token, so the host no longer launches each
        kernel of each layer; the tokens are the same as without.
        """
        B, T0 = idx.shape
        caches = self.new_caches(B, T0 + max_new_tokens)
        logits, _ = self(idx, caches=caches)
        if cuda_graph:
            if not idx.is_cuda or temperature != 0:
                raise ValueError("generate(cuda_graph=True) needs CUDA tensors and greedy decoding (temperature=0)")
            new = self._generate_graphed(logits[:, -1], caches, T0, max_new_tokens)
            return torch.cat([idx, _stop_at_eos(new, eos_id)], dim=1)
        out = [idx]
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        for step in range(max_new_tokens):
            nxt = sample_next(logits[:, -1], temperature, top_k, generator)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out.append(nxt[:, None])
            if step + 1 == max_new_tokens or (eos_id is not None and bool(done.all())):
                break
            logits, _ = self(nxt[:, None], caches=caches)
        return torch.cat(out, dim=1)

    def _generate_graphed(self, last_logits: torch.Tensor, caches: list[Any], T0: int, n: int) -> torch.Tensor:
        """n greedy tokens [B, n] after a prefill of T0 tokens: the first from its logits [B, V], the second by one
        eager decode_step on a side stream (it fills lazily made state and compiles the kernels before the
        capture), the rest by replays of one captured step."""
        tok = last_logits.argmax(dim=-1, keepdim=True)  # [B, 1]
        out = torch.empty(tok.shape[0], n, dtype=torch.long, device=tok.device)
        out[:, :1] = tok
        pos = torch.full((1,), T0, dtype=torch.long, device=tok.device)

        def step() -> None:  # the token at pos -> the next one, written to out[:, pos - T0 + 1]
            nxt = self.decode_step(tok, caches, pos).argmax(dim=-1, keepdim=True)
            out.index_copy_(1, pos - (T0 - 1), nxt)
            tok.copy_(nxt)
            pos.add_(1)

        if n > 1:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream().wait_stream(side)
        if n > 2:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            for _ in range(n - 2):
                graph.replay()
        return out


def _stop_at_eos(new: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """new tokens [B, N] as generate's loop would return them: eos after a row's first eos, and no columns past
    the step where the last row produced its eos."""
    if eos_id is None or new.shape[1] == 0:
        return new
    hit = (new == eos_id).cumsum(dim=1) > 0
    new = torch.where(hit, torch.full_like(new, eos_id), new)
    all_done = hit.all(dim=0).nonzero()
    return new[:, : int(all_done[0]) + 1] if len(all_done) else new


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits [B, V] -> next token ids [B] (greedy when temperature == 0)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
