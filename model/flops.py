"""Parameter counts and training FLOPs per token (attention term included), for MFU and reports."""

from __future__ import annotations

from torch import nn

from model.gpt import GPT


def num_params(model: nn.Module, include_embedding: bool = True) -> int:
    """Distinct parameters (tied weights counted once); optionally without the token embedding."""
    params = {id(p): p for p in model.parameters()}
    n = sum(p.numel() for p in params.values())
    if not include_embedding and isinstance(model, GPT) and not model.cfg.tie_embeddings:
        n -= model.embed.weight.numel()
    return n


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward) at sequence length `seq_len`.

    Forward: 2 FLOPs per weight of every matmul (attention projections, MLP, lm_head; embeddings are lookups)
    plus each attention module's own score/value term, which counts the keys a query really attends to.
    """
    cfg = model.cfg
    mlp = 2 * 3 * cfg.n_embd * cfg.hidden_dim
    head = 2 * cfg.n_embd * model.vocab_size
    attn = sum(block.attn.flops_per_token(seq_len) for block in model.blocks)
    return 3 * (cfg.n_layer * mlp + attn + head)
