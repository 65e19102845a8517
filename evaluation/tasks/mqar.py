"""`mqar`: multi-query associative recall (data.synthetic.mqar documents), teacher-forced.

Each document lists key=value pairs, then filler, then several keys again, each followed by its value. A value
counts as recalled when the model's greedy prediction is right at every one of its tokens given the true
prefix, which is exactly what greedy decoding would produce there; one forward per batch scores every query.
Outputs: `accuracy` (values recalled), `doc_accuracy` (documents with every value recalled), per length.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from data.synthetic import mqar
from evaluation.generation import teacher_forced
from evaluation.tasks.common import EvalContext, log, mean, write_jsonl


def run_mqar(ctx: EvalContext) -> dict[str, Any]:
    c = ctx.cfg.mqar
    metrics: dict[str, Any] = {}
    values, docs_ok, rows, skipped = [], [], [], 0
    for L in tqdm(ctx.grid_lengths(c.lengths, "mqar"), desc="mqar", leave=False):
        try:
            docs = [mqar(ctx.tok, L, ctx.seed_for("mqar", L, s), c.n_pairs, c.n_queries) for s in range(c.samples)]
        except ValueError as e:
            skipped += 1
            log.warning(f"mqar: length {L} skipped ({e})")
            continue
        hits_at_L = []
        for i in range(0, len(docs), ctx.cfg.eval.batch_size):
            batch = docs[i : i + ctx.cfg.eval.batch_size]
            x = torch.tensor([d.tokens for d in batch], device=ctx.loaded.device)
            _, pred = teacher_forced(ctx.model, x, ctx.loaded.autocast)
            for doc, p in zip(batch, pred.cpu()):
                # token t is predicted at position t - 1
                hits = [bool((p[a.start - 1 : a.end - 1] == torch.tensor(doc.tokens[a.start : a.end])).all())
                        for a in doc.answers]
                hits_at_L += hits
                docs_ok.append(all(hits))
                rows.append({"length": L, "seed": doc.seed, "answers": [a.text for a in doc.answers],
                             "recalled": hits})
        values += hits_at_L
        metrics[f"accuracy@{L}"] = mean([float(h) for h in hits_at_L])
    write_jsonl(ctx.task_dir("mqar") / "predictions.jsonl", rows)
    return {"accuracy": mean([float(h) for h in values]), "doc_accuracy": mean([float(d) for d in docs_ok]),
            "values": len(values), "skipped_lengths": skipped, **metrics}
