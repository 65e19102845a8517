"""`passkey` and `niah`: retrieval over a grid of context lengths x needle depths, accuracy by cell.

A document of exactly L tokens (prompt + answer) hides the needle at depth d % of its filler / haystack; the
model greedily continues the prompt and is right when the expected value occurs in its continuation
(`accuracy`, the heatmap's value) and, stricter, when its first word is the value (`exact`).
Outputs in OUT/<task>/: grid.json (lengths, depths, per-cell accuracy/exact), predictions.jsonl, heatmap.png.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.files import write_text_atomic
from data.synthetic import SyntheticDoc, passkey
from evaluation import plots
from evaluation.loading import EvalError
from evaluation.report import grid_markdown, write_json_atomic
from evaluation.ruler import niah_doc
from evaluation.selection import SelectionRecorder
from evaluation.tasks.common import EvalContext, exact_match, log, mean, write_jsonl
from evaluation.text_sources import haystack_ids


def run_grid(ctx: EvalContext, task: str, lengths: list[int], depths: list[float], samples: int,
             max_new_tokens: int, make: Callable[[int, int, float], SyntheticDoc], extra: dict[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build every cell's documents, generate, score. Returns (metrics for results.json, grid.json content)."""
    docs, where, skipped = [], [], []
    for L in lengths:
        try:  # a length too short for the task's fixed text is skipped whole
            cell = [(make(L, ctx.seed_for(task, L, d, s), d), (L, d, s)) for d in depths for s in range(samples)]
        except ValueError as e:
            skipped.append(L)
            log.warning(f"{task}: length {L} skipped ({e})")
            continue
        docs += [doc for doc, _ in cell]
        where += [w for _, w in cell]
    run_lengths = [L for L in lengths if L not in skipped]
    with SelectionRecorder(ctx.model) as recorder:
        gens = ctx.generate([doc.prompt_tokens for doc in docs], max_new_tokens, desc=task,
                            on_prefill=recorder.on_prefill if recorder else None)
    hits: dict[tuple[int, float], list[float]] = {}
    exacts: dict[tuple[int, float], list[float]] = {}
    rows = []
    for i, (doc, (L, d, s), gen) in enumerate(zip(docs, where, gens)):
        pred = ctx.tok.decode(gen)
        expected = doc.answer.strip()
        hit, exact = expected in pred, exact_match(pred, expected)
        hits.setdefault((L, d), []).append(float(hit))
        exacts.setdefault((L, d), []).append(float(exact))
        rows.append({"length": L, "depth": d, "sample": s, "needle_start": doc.needles[0].start,
                     "expected": expected, "pred": pred, "correct": hit, "exact": exact})
        if recorder:
            rows[-1].update(recorder.needle_stats(i, doc.needles[0], len(doc.prompt_tokens)))
    grid = [[mean(hits.get((L, d), [])) for L in run_lengths] for d in depths]
    exact_grid = [[mean(exacts.get((L, d), [])) for L in run_lengths] for d in depths]
    all_hits = [h for v in hits.values() for h in v]
    metrics: dict[str, Any] = {
        "accuracy": mean(all_hits),
        "exact": mean([h for v in exacts.values() for h in v]),
        "samples": len(all_hits),
        "skipped_lengths": len(skipped),
    }
    for L in run_lengths:
        metrics[f"accuracy@{L}"] = mean([h for d in depths for h in hits.get((L, d), [])])
    if recorder:  # the selection's recall of needles it must find (outside the window)
        far = [r for r in rows if not r["needle_in_window"]]
        metrics["needle_selected"] = mean([r["needle_selected"] for r in far])
        for L in run_lengths:
            metrics[f"needle_selected@{L}"] = mean([r["needle_selected"] for r in far if r["length"] == L])
    grid_json = {"task": task, "lengths": run_lengths, "depths": depths, "samples_per_cell": samples,
                 "accuracy": grid, "exact": exact_grid, "model": ctx.loaded.describe()["name"],
                 "attention": ctx.model.attn_cfg.name, "checkpoint": str(ctx.loaded.checkpoint), **extra}
    out = ctx.task_dir(task)
    write_jsonl(out / "predictions.jsonl", rows)
    write_json_atomic(out / "grid.json", grid_json)
    write_text_atomic(out / "grid.md", grid_markdown(grid, depths, run_lengths) + "\n")
    if run_lengths:
        plots.plot_heatmap(grid, depths, run_lengths, f"{task}: {_label(grid_json)}", out / "heatmap.png")
    return metrics, grid_json


def _label(grid_json: dict[str, Any]) -> str:
    return f"{grid_json.get('model')} ({grid_json.get('attention')})"


def run_passkey(ctx: EvalContext) -> dict[str, Any]:
    c = ctx.cfg.passkey
    make = lambda L, seed, d: passkey(ctx.tok, L, seed, depth=d / 100)
    metrics, _ = run_grid(ctx, "passkey", ctx.grid_lengths(c.lengths, "passkey"), list(c.depths), c.samples,
                          c.max_new_tokens, make, {})
    return metrics


def run_niah(ctx: EvalContext) -> dict[str, Any]:
    c = ctx.cfg.niah
    lengths = ctx.grid_lengths(c.lengths, "niah")
    hay, source = haystack_ids(c.haystack, ctx.tok, ctx.loaded.dataset_dir, max(lengths, default=1))
    make = lambda L, seed, d: niah_doc(ctx.tok, L, seed, d, hay)
    metrics, grid_json = run_grid(ctx, "niah", lengths, list(c.depths), c.samples, c.max_new_tokens, make,
                                  {"haystack": source})
    metrics["haystack"] = source
    if c.compare_to:
        other = Path(c.compare_to) / "niah" / "grid.json"
        if not other.is_file():
            raise EvalError(f"niah.compare_to={c.compare_to}: {other} not found (run niah there first)")
        theirs = json.loads(other.read_text())
        panels = [(_label(g), g["accuracy"], g["depths"], g["lengths"]) for g in (grid_json, theirs)]
        plots.plot_heatmaps_side_by_side(panels, ctx.task_dir("niah") / "heatmap_side_by_side.png")
    return metrics
