"""`ruler`: RULER-style synthetic tasks (evaluation/ruler.py), scored with RULER's string_match_all (0-100).

For each kind and length L: `ruler.samples` prompts of L - max_new_tokens tokens (RULER counts the generation
budget in the length), greedy continuations of up to max_new_tokens, cleaned like RULER, scored by the share
of expected strings they contain. Outputs: a score per kind, per kind and length, and their `average`;
OUT/ruler/predictions.jsonl.
"""

from __future__ import annotations

from typing import Any

from evaluation.loading import EvalError
from evaluation.metrics import ruler_postprocess, string_match_all
from evaluation.ruler import RULER_KINDS, new_tokens_for, ruler_sample
from evaluation.tasks.common import EvalContext, log, mean, write_jsonl
from evaluation.text_sources import haystack_ids


def run_ruler(ctx: EvalContext) -> dict[str, Any]:
    c = ctx.cfg.ruler
    unknown = [k for k in c.tasks if k not in RULER_KINDS]
    if unknown:
        raise EvalError(f"ruler.tasks has unknown kinds {unknown}: choose from {list(RULER_KINDS)}")
    lengths = ctx.grid_lengths(c.lengths, "ruler")
    hay, source = haystack_ids(c.haystack, ctx.tok, ctx.loaded.dataset_dir, max(lengths, default=1))
    metrics: dict[str, Any] = {}
    rows, per_kind, skipped = [], {}, 0
    for kind in c.tasks:
        new = c.max_new_tokens or new_tokens_for(kind)
        preds_all, refs_all = [], []
        for L in lengths:
            try:
                samples = [ruler_sample(kind, ctx.tok, L - new, ctx.seed_for("ruler", kind, L, s), hay)
                           for s in range(c.samples)]
            except ValueError as e:
                skipped += 1
                log.warning(f"ruler {kind}: length {L} skipped ({e})")
                continue
            gens = ctx.generate([s.prompt for s in samples], new, desc=f"ruler {kind} {L}")
            preds = [ruler_postprocess(ctx.tok.decode(g)) for g in gens]
            refs = [s.outputs for s in samples]
            metrics[f"{kind}@{L}"] = string_match_all(preds, refs)
            preds_all += preds
            refs_all += refs
            rows += [{"task": kind, "length": L, "pred": p, "outputs": r} for p, r in zip(preds, refs)]
        if preds_all:
            per_kind[kind] = string_match_all(preds_all, refs_all)
    write_jsonl(ctx.task_dir("ruler") / "predictions.jsonl", rows)
    return {"average": mean(list(per_kind.values())), **per_kind, "haystack": source, "skipped_cells": skipped,
            **metrics}
