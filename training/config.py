"""The root structured config: one typed dataclass per Hydra group, registered in Hydra's ConfigStore.

configs/config.yaml lists the group defaults; configs/<group>/*.yaml fill the fields. Because the schema is
typed and closed, `train.stpes=10` or `train.steps=ten` fails at composition with Hydra's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from data.config import DataConfig
from model.config import AttentionConfig, ModelConfig


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    weight_decay: float = 0.1  # applied to matrices (dim >= 2) only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    schedule: str = "cosine"  # "cosine" (warmup + cosine) | "wsd" (warmup, stable, decay) | "constant"
    warmup_steps: int = 10
    decay_frac: float = 0.2  # wsd: fraction of the run spent decaying at the end
    # Length of the schedule in steps; 0 = train.steps. Set it to stop a run early (train.steps smaller) and
    # later resume it with a larger train.steps on exactly the same learning-rate curve.
    schedule_steps: int = 0


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 100  # optimizer steps
    batch_tokens: int = 4096  # global batch in tokens (world-size invariant)
    micro_batch_size: int = 8  # sequences per rank per forward/backward; grad accumulation fills the rest
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    max_bad_steps: int = 5  # stop after this many consecutive non-finite steps
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda"
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "bf16" | "fp32"
    compile: bool = False  # torch.compile the model
    # torch.compile mode: "default" | "reduce-overhead" (CUDA graphs: no per-op host cost, for small or
    # sparse layers whose GPU work is shorter than the host's launching, e.g. NSA at 8k) | "max-autotune" |
    # "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    activation_checkpointing: bool = False  # recompute block activations in backward (long contexts)
    parallel: str = "ddp"  # multi-process data parallelism: "ddp" | "fsdp" (FSDP2)
    log_interval: int = 10  # console line every N steps (metrics.jsonl gets every step)
    val_interval: int = 50  # validation every N steps (and at the end); 0 disables
    val_tokens: int = 8192  # fixed validation budget in tokens
    # retrieval probes scored at each validation (training/probes.py): synthetic kinds (data/synthetic.py),
    # logged as val_probe_<kind> = answer-token loss of val_probe_samples fixed documents of the training length
    val_probes: list[str] = field(default_factory=list)
    val_probe_samples: int = 16
    # NSA: also log val_probe_<kind>_selected, how often the selection holds the needle at the answer (one eager
    # forward of the probes per validation; torch >= 2.6)
    val_probe_selection: bool = False
    ckpt_interval: int = 50  # checkpoint every N steps (and at the end); 0 = only at the end
    keep_last: int = 3  # checkpoints kept
    resume: str = "auto"  # "auto": newest checkpoint in run_dir if any | "never" | path to a checkpoint file


@dataclass
class LoggerConfig:
    mode: str = "disabled"  # wandb: "online" | "offline" | "disabled" (metrics.jsonl is always written)
    project: str = "nsa-gpt"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = MISSING
    attention: AttentionConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = MISSING
    # The run directory is a pure function of the config (no ${now:}), so every torchrun rank computes the
    # same one, and re-running the same command resumes (train.resume=auto).
    name: str = "${run_name:}-s${train.seed}"
    run_dir: str = "runs/${name}"


def _run_name() -> str:
    """model-attention-data from Hydra's group choices (falls back to 'run' outside @hydra.main)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "run"
    choices = HydraConfig.get().runtime.choices
    return "-".join(str(choices.get(g)) for g in ("model", "attention", "data"))


def register_configs() -> None:
    """Register the schema (idempotent) so that configs/config.yaml can use `base_config` as its base."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name)
    ConfigStore.instance().store(name="base_config", node=Config)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def to_dataclass(cfg: Any) -> Config:
    """OmegaConf DictConfig -> plain, fully resolved `Config` dataclass (what the code below hydra uses)."""
    return OmegaConf.to_object(cfg)


def check_choices(choices: dict[str, tuple[Any, tuple]]) -> None:
    """{"key": (value, allowed values)}: raise a one-line ValueError naming the first value not allowed."""
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")


def check_positive(values: dict[str, float]) -> None:
    """{"key": value}: raise a one-line ValueError naming the first value that is not > 0."""
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key}={value} must be positive")


def validate(cfg: Config) -> None:
    """Cross-field checks that types cannot express; one-line errors that say how to fix the override."""
    choices = {
        "optim.schedule": (cfg.optim.schedule, ("cosine", "wsd", "constant")),
        "train.parallel": (cfg.train.parallel, ("ddp", "fsdp")),
        "train.device": (cfg.train.device, ("auto", "cpu", "cuda")),
        "train.dtype": (cfg.train.dtype, ("auto", "bf16", "fp32")),
        "train.compile_mode": (cfg.train.compile_mode, COMPILE_MODES),
        "logger.mode": (cfg.logger.mode, ("online", "offline", "disabled")),
    }
    check_choices(choices)
    check_positive(
        {
            "train.steps": cfg.train.steps,
            "train.batch_tokens": cfg.train.batch_tokens,
            "train.micro_batch_size": cfg.train.micro_batch_size,
            "train.max_bad_steps": cfg.train.max_bad_steps,
            "train.keep_last": cfg.train.keep_last,
            "train.log_interval": cfg.train.log_interval,
            "optim.lr": cfg.optim.lr,
        }
    )
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ValueError(f"optim.min_lr_ratio={cfg.optim.min_lr_ratio} must be in [0, 1]")
    if not 0 <= cfg.optim.decay_frac <= 1:
        raise ValueError(f"optim.decay_frac={cfg.optim.decay_frac} must be in [0, 1]")
    if cfg.optim.schedule_steps < 0:
        raise ValueError(f"optim.schedule_steps={cfg.optim.schedule_steps} must be >= 0 (0 = train.steps)")
    if cfg.optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={cfg.optim.warmup_steps} must be >= 0")
    cfg.model.validate()


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    """Micro-steps per optimizer step so that the global batch is `train.batch_tokens` for any world size."""
    per_micro = cfg.train.micro_batch_size * cfg.model.max_seq_len * world_size
    if cfg.train.batch_tokens % per_micro:
        raise ValueError(
            f"train.batch_tokens={cfg.train.batch_tokens} is not a multiple of micro_batch_size x max_seq_len x "
            f"world_size = {cfg.train.micro_batch_size} x {cfg.model.max_seq_len} x {world_size} = {per_micro}: "
            "change train.batch_tokens or train.micro_batch_size"
        )
    return cfg.train.batch_tokens // per_micro
