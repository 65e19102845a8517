"""Structured configs of the model and of its attention (Hydra groups `model/` and `attention/`).

Every field is typed: a typo or a wrong type in a command-line override fails when Hydra composes the config.
`validate()` checks the relations between fields that types cannot express, at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AttentionConfig:
    """Which attention the GPT uses, and its hyper-parameters (NSA's are ignored by `full`)."""

    name: str = "full"  # a key of model.attention.ATTENTION_REGISTRY: "full" | "nsa"
    # NSA (see ../shared/NSA.md); defaults are the paper's.
    compress_block: int = 32  # l: tokens summarised by one compressed key
    compress_stride: int = 16  # d: distance between consecutive compressed blocks
    select_block: int = 64  # l': selection block size
    num_select: int = 16  # n: selected blocks per query, forced ones included
    num_init: int = 1  # forced initial blocks
    num_local: int = 2  # forced most-recent blocks (the one holding the query included)
    window: int = 512  # w: sliding-window size
    shared_kv: bool = False  # one key/value projection for all three branches instead of one per branch
    compress_hidden: int = 0  # hidden width of NSA's compression MLP phi (l*D -> hidden -> D); 0 -> 2 * head size


@dataclass
class ModelConfig:
    """GPT shape. `vocab_size=0` means: take it from the dataset's tokenizer (padded, see `padded_vocab`)."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int = 2  # GQA: n_head // n_kv_head query heads share one key/value head
    head_dim: int = 0  # 0 -> n_embd // n_head
    mlp_hidden: int = 0  # 0 -> SwiGLU hidden of ~8/3 * n_embd rounded up to a multiple of 64
    vocab_size: int = 0
    vocab_multiple: int = 64  # pad the embedding to a multiple of this (tensor-core friendly)
    max_seq_len: int = 256  # training / RoPE table length
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    init_std: float = 0.02
    # Training loss: 0 -> cross-entropy over the full [B*T, V] logits; > 0 -> fused lm_head + cross-entropy over
    # this many rows at a time (model/loss.py): the full logits never exist (GPT.forward returns None for them).
    loss_chunk: int = 0
    # Dtype of the residual stream between blocks: "fp32" (the embedding's float32, what autocast leaves it in) or
    # "compute" (cast to the autocast dtype after the embedding: every elementwise pass between the matmuls reads
    # and writes half the bytes; 3-7% faster; in GPU runs it ended level with float32 but trailed mid-run on two of
    # three seeds, so it is not the default: docs/training.md).
    # Without autocast both are the weights' dtype.
    residual_dtype: str = "fp32"

    def validate(self) -> None:
        """Raise ValueError on an inconsistent shape (checked once at start-up)."""
        for field in ("n_layer", "n_embd", "n_head", "n_kv_head", "max_seq_len"):
            if getattr(self, field) <= 0:
                raise ValueError(f"model.{field}={getattr(self, field)} must be positive")
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"model.n_head={self.n_head} is not a multiple of model.n_kv_head={self.n_kv_head}: "
                "pick n_kv_head dividing n_head (GQA)"
            )
        if self.head_dim == 0 and self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                "set model.head_dim explicitly or change n_head"
            )
        if self.loss_chunk < 0:
            raise ValueError(
                f"model.loss_chunk={self.loss_chunk} is negative: set 0 (loss on the full logits) "
                "or the number of rows per chunk of the fused loss (e.g. 8192)"
            )
        if self.residual_dtype not in ("fp32", "compute"):
            raise ValueError(
                f"model.residual_dtype={self.residual_dtype!r} is not a residual dtype: use fp32 or compute "
                "(the autocast dtype)"
            )
        if self.head_size % 2:
            raise ValueError(f"head size {self.head_size} must be even for RoPE: set model.head_dim to an even value")

    @property
    def head_size(self) -> int:
        """Per-head query/key/value width (`head_dim`, or n_embd // n_head when head_dim is 0)."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return -(-int(8 * self.n_embd / 3) // 64) * 64

    def padded_vocab(self, vocab_size: int | None = None) -> int:
        v = vocab_size if vocab_size is not None else self.vocab_size
        if v <= 0:
            raise ValueError("model.vocab_size is unset: set it or let train.py take it from the tokenizer")
        return -(-v // self.vocab_multiple) * self.vocab_multiple
