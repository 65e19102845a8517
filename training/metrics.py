"""Rank-0 logging: metrics.jsonl (always), wandb (lazy import, optional) and one compact console line."""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path
from typing import Any

import torch

from common.files import write_text_atomic
from training.config import LoggerConfig

# Dense bf16 tensor-core peak FLOP/s per device (no sparsity), by a substring of the device name.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_bf16_flops(device: torch.device) -> float | None:
    """The card's dense bf16 peak, or None (CPU or an unknown card: MFU is then reported as null)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def memory_gb(device: torch.device) -> float:
    """Peak memory: allocated GPU memory on CUDA, the process's max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux


def _step_of(line: str) -> float:
    """The step of a metrics line; a line torn by a killed process counts as past every step."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return float("inf")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume from `step`, move rows past it (from a run that died after its last checkpoint) aside into
    metrics.discarded.jsonl, so metrics.jsonl has one row per step and nothing written is lost."""
    if not path.exists():
        return
    keep, drop = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            (keep if _step_of(line) <= step else drop).append(line)
    if drop:
        with open(path.with_name("metrics.discarded.jsonl"), "a") as f:
            f.write("\n".join(drop) + "\n")
        write_text_atomic(path, "".join(line + "\n" for line in keep))


class MetricsLogger:
    """Only rank 0 constructs a real one; other ranks get `MetricsLogger(None, ...)` which does nothing."""

    def __init__(self, run_dir: Path | None, cfg: LoggerConfig, config: dict[str, Any], wandb_id: str | None) -> None:
        self.run_dir, self.wandb, self.wandb_id = run_dir, None, wandb_id
        if run_dir is None:
            return
        self.file = open(run_dir / "metrics.jsonl", "a")
        if cfg.mode != "disabled":
            import wandb  # lazy: importing wandb is slow and unnecessary for most runs

            self.wandb = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                tags=list(cfg.tags),
                name=run_dir.name,
                dir=str(run_dir),
                id=wandb_id,  # None on a fresh run: wandb makes one, which the checkpoints then keep
                resume="allow",
                mode=cfg.mode,
                config=config,
            )
            self.wandb_id = self.wandb.id
            self.wandb.define_metric("tokens")
            self.wandb.define_metric("*", step_metric="tokens")

    def log(self, row: dict[str, Any]) -> None:
        """Append one JSON object (non-finite floats become null) and forward it to wandb."""
        if self.run_dir is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in clean.items() if v is not None})

    def close(self) -> None:
        if self.run_dir is None:
            return
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def console_line(row: dict[str, Any], total_steps: int) -> str:
    parts = [f"step {row['step']:>6}/{total_steps}", f"loss {row['loss']:.4f}"]
    if row.get("val_loss") is not None:
        parts.append(f"val {row['val_loss']:.4f}")
    parts += [f"{k.removeprefix('val_probe_')} {v:.3f}" for k, v in row.items() if k.startswith("val_probe_")]
    parts += [f"lr {row['lr']:.2e}", f"gnorm {row['grad_norm']:.2f}", f"{row['tok_per_s'] / 1e3:.1f}k tok/s"]
    if row.get("mfu") is not None:
        parts.append(f"mfu {100 * row['mfu']:.1f}%")
    parts.append(f"mem {row['mem_gb']:.2f}GB")
    return " | ".join(parts)
