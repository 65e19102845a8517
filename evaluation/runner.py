"""`evaluate(cfg)`: load the checkpoint, run the selected tasks in order, write results after each one.

A task that fails is recorded in results.json as {"error": ...} and the others still run; evaluate then raises
EvalError naming the failed tasks (eval.py exits non-zero), so partial results are never lost.
`longbench.score_only=PRED_DIR` re-scores a folder of LongBench predictions without loading any model.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import torch

from evaluation import longbench as lb
from evaluation.config import EvalConfig, validate
from evaluation.loading import EvalError, Loaded, load, sparsity
from evaluation.report import Results, markdown_table
from evaluation.tasks import TASKS, EvalContext
from evaluation.text_sources import corpus_tokens

log = logging.getLogger("eval")


def score_only(cfg: EvalConfig) -> dict[str, Any]:
    if cfg.tasks != ["longbench"]:
        raise EvalError(f"longbench.score_only runs no model, so tasks= must be [longbench], not {cfg.tasks}")
    result = lb.score_dir(Path(cfg.longbench.score_only), cfg.longbench.e)
    log.info("LongBench scores (%s/result.json):\n%s", cfg.longbench.score_only,
             markdown_table(["task", "score"], [[t, s] for t, s in result.items()]))
    return {"longbench": result}


def held_out_window(loaded: Loaded) -> torch.Tensor | None:
    """One window [1, train_length] of the val split, for the selection NSA really makes; None without one."""
    try:
        tokens = corpus_tokens(loaded.dataset_dir, loaded.train_length)
    except EvalError:
        return None
    if len(tokens) < loaded.train_length:
        return None
    return torch.from_numpy(tokens)[None].to(loaded.device)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the configured evaluation; returns the content of results.json."""
    try:
        validate(cfg, list(TASKS))
    except ValueError as e:
        raise EvalError(str(e)) from None
    if cfg.longbench.score_only:
        return score_only(cfg)
    torch.manual_seed(cfg.seed)
    loaded = load(cfg.checkpoint, cfg.eval.device, cfg.eval.dtype, cfg.eval.data_root)
    max_length = cfg.eval.max_length or loaded.train_length
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = EvalContext(loaded, cfg, out_dir, max_length)
    with loaded.autocast():  # the selection as the evaluated model makes it (bf16 on GPU)
        sparsity_stats = sparsity(loaded.model, [loaded.train_length, max_length], held_out_window(loaded))
    results = Results(out_dir, {
        "model": loaded.describe(),
        "checkpoint": str(loaded.checkpoint),
        "step": loaded.step,
        "tokens": loaded.tokens,
        "seed": cfg.seed,
        "max_length": max_length,
        "sparsity": sparsity_stats,
    })
    log.info(f"evaluating {loaded.checkpoint} ({loaded.model.attn_cfg.name} attention, step {loaded.step}) on "
             f"{loaded.device} up to {max_length} tokens: {cfg.tasks} -> {out_dir}")
    failed = []
    for task in cfg.tasks:
        try:
            metrics = TASKS[task](ctx)
        except Exception as e:  # record it, keep going: the other tasks' results still count
            log.error(f"task {task} failed: {e}\n{traceback.format_exc()}")
            metrics = {"error": f"{type(e).__name__}: {e}"}
            failed.append(task)
        results.data["throughput"] = ctx.stats.as_dict()
        results.set(task, metrics)
        log.info(f"{task}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in list(metrics.items())[:6]))
    if cfg.wandb.enabled:
        from evaluation.wandb_log import log_to_wandb

        try:
            log_to_wandb(cfg, loaded, results.data, out_dir)
        except Exception as e:  # e.g. not logged in: the results are on disk anyway
            raise EvalError(f"wandb logging failed ({type(e).__name__}: {e}); the results are saved in {out_dir}: "
                            "run `wandb login` or set wandb.mode=offline") from None
    if failed:
        raise EvalError(f"task(s) {failed} failed (see {out_dir / 'results.json'}); the others' results are saved")
    return results.data
