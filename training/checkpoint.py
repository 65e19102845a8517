"""Checkpoints: atomic writes (temp file + rename), the last k kept, newest complete one found for resume.

A checkpoint is one torch file `run_dir/checkpoints/step_XXXXXXX.pt` holding the full (unsharded) model and
optimizer state keyed by parameter names (so it loads under 1 GPU, DDP or FSDP2 alike), the step, tokens seen,
the data cursor, every rank's RNG state, the wandb run id and the resolved config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from common.files import atomic_write

_NAME = re.compile(r"^step_(\d+)\.pt$")
# The config sections a checkpoint must agree on to be loaded into a model.
MODEL_SECTIONS = ("model", "attention")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (temp files never match the name pattern), oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def model_and_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full state dicts gathered on CPU (collective under FSDP2: every rank must call it)."""
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_model_and_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, ckpt: dict[str, Any]
) -> None:
    if optimizer is None:
        model.load_state_dict(ckpt["model"])
        return
    set_state_dict(
        model,
        optimizer,
        model_state_dict=ckpt["model"],
        optim_state_dict=ckpt["optimizer"],
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False),
    )


def save_checkpoint(run_dir: str | Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write `payload` as the checkpoint of `step` and delete all but the newest `keep_last`."""
    path = checkpoint_dir(run_dir) / f"step_{step:07d}.pt"
    with atomic_write(path) as f:  # temp file + rename: a checkpoint file is always complete
        torch.save(payload, f)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by this repo (it holds RNG states and loader cursors besides tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: check train.resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}): delete it or pick another") from e


def find_resume_checkpoint(run_dir: str | Path, resume: str) -> Path | None:
    """`resume`: "auto" -> newest checkpoint in run_dir (None if none), "never" -> None, else a file path."""
    if resume == "never":
        if list_checkpoints(run_dir):
            raise ValueError(
                f"{run_dir} already holds checkpoints and train.resume=never would overwrite them: "
                "use another run_dir or train.resume=auto"
            )
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    return Path(resume)


def check_compatible(ckpt_config: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose model/attention config differs from the current one."""
    diffs = []
    for section in MODEL_SECTIONS:
        old, new = ckpt_config.get(section, {}), config.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                diffs.append(f"{section}.{key}: checkpoint {old.get(key)!r} vs config {new.get(key)!r}")
    if diffs:
        raise ValueError(
            f"checkpoint {path} was made with a different model config ({'; '.join(diffs)}): "
            "use the same model/attention settings, another run_dir, or train.resume=never"
        )
