"""Optional: log an eval's tables and figures to the checkpoint's training run in wandb (resumed by its id)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.config import EvalConfig
from evaluation.loading import Loaded
from evaluation.report import META_KEYS


def log_to_wandb(cfg: EvalConfig, loaded: Loaded, results: dict[str, Any], out_dir: Path) -> None:
    import wandb  # lazy: slow to import and only needed here

    logger = loaded.config.get("logger", {})
    run = wandb.init(
        project=cfg.wandb.project or logger.get("project", "nsa-gpt"),
        entity=logger.get("entity"),
        id=loaded.wandb_id,  # the training run when it logged to wandb; a new run otherwise
        resume="allow",
        mode=cfg.wandb.mode,
        name=None if loaded.wandb_id else f"eval-{loaded.config.get('name', 'run')}",
        job_type="eval",
    )
    scalars: dict[str, Any] = {"eval/step": loaded.step}
    for task, metrics in results.items():
        if task in META_KEYS or not isinstance(metrics, dict):
            continue
        rows = [[k, f"{v:.6g}" if isinstance(v, float) else str(v)] for k, v in metrics.items()]  # one type
        scalars[f"eval/{task}/table"] = wandb.Table(columns=["metric", "value"], data=rows)
        scalars.update({f"eval/{task}/{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
    for png in sorted(out_dir.rglob("*.png")):
        scalars[f"eval/{png.parent.name}/{png.stem}"] = wandb.Image(str(png))
    run.log(scalars)
    run.finish()
