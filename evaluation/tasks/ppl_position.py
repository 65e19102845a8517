"""`ppl_position`: held-out loss by token position, in buckets, with a plot.

Windows of eval.max_length + 1 tokens from the prepared dataset's val split (never trained on), each starting
at a document start (its EOS separator, as in training) when enough documents are that long, else contiguous
windows of the split. Loss at position t is the cross-entropy of predicting token t + 1 from tokens 0..t.
Outputs in OUT/ppl_position/: loss_by_position.json, loss_by_position.png.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation import plots
from evaluation.generation import teacher_forced
from evaluation.loading import EvalError
from evaluation.report import write_json_atomic
from evaluation.tasks.common import EvalContext
from evaluation.text_sources import corpus_tokens


def pick_windows(stream: np.ndarray, eos_id: int, length: int, n: int) -> tuple[list[np.ndarray], int]:
    """n windows of `length` tokens: first from documents at least that long (starting at their EOS), then
    contiguous non-overlapping windows of the stream. Returns (windows, how many start at a document)."""
    starts = np.flatnonzero(stream == eos_id).tolist() + [len(stream)]
    windows = [stream[a : a + length] for a, b in zip(starts, starts[1:]) if b - a >= length][:n]
    at_doc = len(windows)
    for a in range(0, len(stream) - length + 1, length):
        if len(windows) == n:
            break
        windows.append(stream[a : a + length])
    return windows, at_doc


def run_ppl_position(ctx: EvalContext) -> dict[str, Any]:
    c = ctx.cfg.ppl_position
    L = ctx.max_length
    stream = corpus_tokens(ctx.loaded.dataset_dir, 16 * c.samples * (L + 1))
    windows, at_doc = pick_windows(stream, ctx.tok.eos_id, L + 1, c.samples)
    if not windows:
        raise EvalError(f"the val split of {ctx.loaded.dataset_dir} has {len(stream)} tokens, fewer than "
                        f"eval.max_length + 1 = {L + 1}: lower eval.max_length or prepare more validation data")
    device = ctx.loaded.device
    total = torch.zeros(L, dtype=torch.float64)
    bs = ctx.cfg.eval.batch_size
    for i in tqdm(range(0, len(windows), bs), desc="ppl_position", leave=False):
        x = torch.from_numpy(np.stack(windows[i : i + bs])).to(device)
        loss, _ = teacher_forced(ctx.model, x, ctx.loaded.autocast)
        total += loss.double().sum(0).cpu()
    per_pos = (total / len(windows)).tolist()
    edges = np.linspace(0, L, c.buckets + 1).round().astype(int).tolist()
    buckets = [float(np.mean(per_pos[a:b])) for a, b in zip(edges, edges[1:]) if b > a]
    edges = [edges[0]] + [b for a, b in zip(edges, edges[1:]) if b > a]
    mean_loss = float(np.mean(per_pos))
    metrics: dict[str, Any] = {"loss": mean_loss, "ppl": math.exp(mean_loss), "windows": len(windows),
                               "windows_at_document_start": at_doc}
    for a, b, v in zip(edges, edges[1:], buckets):
        metrics[f"loss@{a}-{b}"] = v
    out = ctx.task_dir("ppl_position")
    write_json_atomic(out / "loss_by_position.json", {"length": L, "train_length": ctx.loaded.train_length,
                                                      "loss_by_position": per_pos, "bucket_edges": edges,
                                                      "bucket_loss": buckets, **metrics})
    plots.plot_loss_by_position(per_pos, edges, buckets, ctx.loaded.train_length,
                                f"held-out loss by position: {ctx.loaded.describe()['name']}",
                                out / "loss_by_position.png")
    return metrics
