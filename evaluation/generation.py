"""Batched greedy decoding with the model's KV cache, and teacher-forced scoring (losses, argmax).

The GPT has no padding mask, so prompts are never padded: prompts of equal token length are batched together
(synthetic grids produce many of those), others run in batches of one. Decoding is one prefill forward of the
whole prompt into fresh caches (`model.new_caches`), then one forward per new token on the last token only:
no full recompute per token, for any attention type that implements the cache.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from model import GPT


@dataclass
class Throughput:
    """Tokens processed and seconds spent in prefill (prompt) and decode (one token per step) forwards."""

    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        rate = lambda n, s: n / s if s > 0 else 0.0
        return {
            "prefill_tokens": self.prefill_tokens,
            "prefill_tok_s": rate(self.prefill_tokens, self.prefill_s),
            "decode_tokens": self.decode_tokens,
            "decode_tok_s": rate(self.decode_tokens, self.decode_s),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches_of_equal_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal length (in order of first appearance), cut into batches of <= batch_size."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[n].append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


@torch.no_grad()
def greedy_generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
    min_new_tokens: int = 0,
    batch_size: int = 8,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    stats: Throughput | None = None,
    desc: str | None = None,
    on_prefill: Callable[[list[int]], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts; returns, per prompt, the new tokens up to (excluding) the first
    stop token. Stop tokens cannot be produced before `min_new_tokens` tokens (their logits are masked, like
    transformers' min_length). Output order = input order. on_prefill(batch) runs after each batch's prefill
    forward, with the batch's prompt indices in row order (e.g. to read what the model recorded)."""
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_generate: empty prompt (the model needs at least one token)")
    device = model.embed.weight.device
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    outputs: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=desc, leave=False, disable=desc is None)
    for batch in batches_of_equal_length([len(p) for p in prompts], batch_size):
        idx = torch.tensor([list(prompts[i]) for i in batch], dtype=torch.long, device=device)
        B, T = idx.shape
        t0 = time.perf_counter()
        caches = model.new_caches(B, T + max_new_tokens)
        with autocast():
            logits = model(idx, caches=caches)[0][:, -1]
        if on_prefill is not None:
            on_prefill(batch)
        _sync(device)
        t1 = time.perf_counter()
        done = torch.zeros(B, dtype=torch.bool, device=device)
        new: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            if step < min_new_tokens and len(stop):
                logits[:, stop] = float("-inf")
            nxt = logits.argmax(dim=-1)
            new.append(nxt)
            if len(stop):
                done |= torch.isin(nxt, stop)
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            with autocast():
                logits = model(nxt[:, None], caches=caches)[0][:, -1]
        _sync(device)
        t2 = time.perf_counter()
        if stats is not None:
            stats.prefill_tokens += B * T
            stats.prefill_s += t1 - t0
            stats.decode_tokens += B * (len(new) - 1)  # the first new token came from the prefill
            stats.decode_s += t2 - t1
        gen = torch.stack(new, dim=1).tolist()
        stop_set = set(stop.tolist())
        for row, i in enumerate(batch):
            toks = gen[row]
            cut = next((j for j, t in enumerate(toks) if t in stop_set), len(toks))
            outputs[i] = toks[:cut]
        bar.update(len(batch))
    bar.close()
    return outputs


@torch.no_grad()
def teacher_forced(
    model: GPT,
    tokens: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, T] -> (loss [B, T-1] of predicting token t+1 at position t, greedy prediction [B, T-1]).

    One forward without a cache; RoPE tables grow first so lengths beyond training work."""
    model.rotary.ensure_length(tokens.shape[1])
    with autocast():
        logits = model(tokens[:, :-1])[0]
    loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return loss, logits.argmax(dim=-1)
