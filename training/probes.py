"""Retrieval probes: how well the model predicts the answers of fixed synthetic retrieval documents, measured at
every validation (`train.val_probes`, e.g. [passkey, needle]) and logged as `val_probe_<kind>`.

Why: retrieval appears abruptly during training, at a step that differs between seeds (docs/results/gpu-small:
one seed's full-attention model retrieved 87% of pass keys, the other's none). A single evaluation at the end
cannot tell a model just short of the onset from one that never learns it; a curve over training can.

What: `train.val_probe_samples` documents per kind, each exactly one training sequence long, from the generators
the training mix and eval.py use (data/synthetic.py). Kinds that hide needles in real text take the validation
split's text as haystack. The metric is the mean cross-entropy of the final answer's tokens, teacher-forced: 0
is perfect retrieval, while a model that knows the answer's format but not its value pays about ln(10) = 2.3
nats per digit. It needs no generation and runs at the training shape [micro_batch_size, seq_len], so CUDA
graphs, DDP and FSDP2 work as for the validation loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from data import TokenLoader, load_tokenizer
from data.synthetic import GENERATORS, NEEDS_HAYSTACK, generate
from training.distributed import rank_batches

PROBE_SEED = 0x9B0BE  # documents are the same in every run, whatever train.seed is

def build_probes(kinds: list[str], n: int, dataset_dir: Path, seq_len: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """{kind: (x, y)} int64 [n, seq_len] CPU tensors: x the documents' first seq_len tokens, y = -1 except where
    the next token is one of the final answer's tokens (what the loss scores)."""
    bad = [k for k in kinds if k not in GENERATORS]
    if bad:
        raise ValueError(f"train.val_probes={kinds} has unknown kinds {bad}; choose from {', '.join(GENERATORS)}")
    if kinds and n < 1:
        raise ValueError(f"train.val_probe_samples={n} must be >= 1 when train.val_probes is set")
    if not kinds:
        return {}
    tok = load_tokenizer(dataset_dir)
    haystacks: list[list[int] | None] = [None] * n
    if any(k in NEEDS_HAYSTACK for k in kinds):  # the validation text, the same windows every time
        loader = TokenLoader(dataset_dir, "val", seq_len=seq_len, batch_size=n, shuffle=False)
        text, _ = loader.next_batch()
        loader.close()
        haystacks = [row[row != tok.eos_id].tolist() or None for row in text]
    probes = {}
    for kind in kinds:
        x = torch.empty(n, seq_len, dtype=torch.long)
        y = torch.full((n, seq_len), -1, dtype=torch.long)
        for i in range(n):
            try:
                doc = generate(kind, tok, seq_len + 1, seed=PROBE_SEED + i, haystack=haystacks[i])
            except ValueError as e:
                raise ValueError(f"train.val_probes: {kind!r} does not fit in model.max_seq_len={seq_len} ({e}); "
                                 f"drop it from train.val_probes") from None
            tokens = torch.tensor(doc.tokens)
            x[i] = tokens[:-1]
            answer = doc.answers[-1]
            y[i, answer.start - 1:answer.end - 1] = tokens[answer.start:answer.end]  # position p predicts p + 1
        probes[kind] = (x, y)
    return probes


def probe_batches(x: torch.Tensor, y: torch.Tensor, micro: int, rank: int,
                  world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) batches [micro, seq_len] of one probe that `rank` scores (training.distributed.rank_batches:
    samples r, r+W, ...); padding rows repeat the last sample with y = -1 throughout, so they score nothing."""
    n = x.shape[0]
    for rows in rank_batches(n, micro, rank, world):
        take = rows.clamp(max=n - 1)
        yield x[take], torch.where((rows < n)[:, None], y[take], -1)
