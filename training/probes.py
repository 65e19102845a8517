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

For NSA, `train.val_probe_selection` also logs `val_probe_<kind>_selected`: at the query that predicts each
document's answer, the fraction of (layer, KV head) pairs whose selected blocks hold the needle (evaluation/
selection.py gives the same at the end of training). Whether the selection finds the needle, step by step, next
to whether the answer is right. That forward runs eagerly (torch >= 2.6: `torch.compiler.set_stance`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from data import TokenLoader, load_tokenizer
from data.synthetic import GENERATORS, NEEDS_HAYSTACK, generate
from model.attention.nsa import needle_block_hits, nsa_layers, set_selection_recording
from training.distributed import all_reduce_sum, rank_batches

log = logging.getLogger(__name__)

PROBE_SEED = 0x9B0BE  # documents are the same in every run, whatever train.seed is


class Probe(NamedTuple):
    """The n documents of one probe kind (CPU tensors): x [n, seq_len] their first seq_len tokens, y [n, seq_len]
    = -1 except where the next token is one of the final answer's tokens, needle [n, 2] each needle's token span
    [start, end), query [n] the position that predicts the answer's first token."""

    x: torch.Tensor
    y: torch.Tensor
    needle: torch.Tensor
    query: torch.Tensor


def build_probes(kinds: list[str], n: int, dataset_dir: Path, seq_len: int) -> dict[str, Probe]:
    """{kind: Probe} of n documents of each kind, exactly seq_len + 1 tokens long (the loss scores y)."""
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
        needle = torch.empty(n, 2, dtype=torch.long)
        query = torch.empty(n, dtype=torch.long)
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
            needle[i] = torch.tensor(doc.needles[0][1:]) if doc.needles else -1
            query[i] = answer.start - 1
        probes[kind] = Probe(x, y, needle, query)
    return probes


def probe_batches(x: torch.Tensor, y: torch.Tensor, micro: int, rank: int,
                  world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) batches [micro, seq_len] of one probe that `rank` scores (training.distributed.rank_batches:
    samples r, r+W, ...); padding rows repeat the last sample with y = -1 throughout, so they score nothing."""
    n = x.shape[0]
    for rows in rank_batches(n, micro, rank, world):
        take = rows.clamp(max=n - 1)
        yield x[take], torch.where((rows < n)[:, None], y[take], -1)


@torch.no_grad()
def probe_selection(model: torch.nn.Module, probe: Probe, micro: int, rank: int, world: int, device: torch.device,
                    autocast: Callable[[], contextlib.AbstractContextManager]) -> float | None:
    """Mean over the probe's documents of the fraction of (NSA layer, KV head) pairs whose selected blocks, at the
    query predicting the answer, hold the needle (model/attention/nsa.py: needle_block_hits). Every rank takes
    its rows (rank_batches; padding rows repeat the last document and count nothing) and must call this, as for
    the loss. None without NSA layers, documents with needles, or torch.compiler.set_stance (torch < 2.6)."""
    layers = nsa_layers(model)
    if not layers or bool((probe.needle[:, 0] < 0).any()):
        return None
    if not hasattr(torch.compiler, "set_stance"):
        log.warning("train.val_probe_selection needs torch >= 2.6 (torch.compiler.set_stance): not measured")
        return None
    select_size, n = layers[0].attn_cfg.select_block, probe.x.shape[0]
    hit_sum, docs = 0.0, 0
    try:
        set_selection_recording(layers, True)
        with torch.compiler.set_stance("force_eager"):  # no graph to recompile or capture for the recording
            for rows in rank_batches(n, micro, rank, world):
                take = rows.clamp(max=n - 1)
                with autocast():
                    model(probe.x[take].to(device))
                # each row's blocks at its answer query only: [micro, layers, Hkv, n]
                row, query = torch.arange(len(take), device=device), probe.query[take].to(device)
                ids = torch.stack([layer.selection[row, query] for layer in layers], dim=1)
                for j, i in enumerate(take.tolist()):
                    if rows[j] < n:
                        start, end = probe.needle[i].tolist()
                        hits = needle_block_hits(ids[j], start, end, select_size)
                        hit_sum, docs = hit_sum + hits.double().mean().item(), docs + 1
    finally:
        set_selection_recording(layers, False)
    hit_sum, docs = all_reduce_sum(torch.tensor([hit_sum, docs], dtype=torch.float64, device=device)).tolist()
    return hit_sum / docs if docs else None
