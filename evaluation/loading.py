"""Run directory or checkpoint file -> GPT in eval mode on its device, its tokenizer and its resolved config.

The model is rebuilt from the checkpoint's own `model` and `attention` config sections, so any registered
attention type loads; the tokenizer is the one of the prepared dataset the run trained on (the folder is
derived from the checkpoint's data config, or found under `eval.data_root`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data import Tokenizer, dataset_dir, load_tokenizer
from data.config import as_data_config
from model import GPT, AttentionConfig, ModelConfig, num_params
from model.attention.nsa import nsa_layers, nsa_sparsity
from training import checkpoint as ckpt_io


class EvalError(ValueError):
    """Bad input to the evaluation (missing checkpoint, malformed data file, ...): a one-line message."""


@dataclass
class Loaded:
    model: GPT
    tokenizer: Tokenizer
    config: dict[str, Any]  # the checkpoint's resolved training config
    checkpoint: Path
    step: int
    tokens: int
    wandb_id: str | None
    dataset_dir: Path
    device: torch.device
    dtype: str  # "bf16" | "fp32" (autocast dtype of forward passes)

    @property
    def train_length(self) -> int:
        return self.model.cfg.max_seq_len

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        """What results.json says about the model."""
        return {
            "name": self.config.get("name"),
            "attention": self.model.attn_cfg.name,
            "params": num_params(self.model),
            "train_length": self.train_length,
            "model": dataclasses.asdict(self.model.cfg),
            "attention_config": dataclasses.asdict(self.model.attn_cfg),
        }


def resolve_checkpoint(spec: str | None) -> Path:
    """`spec`: a run directory (-> its newest complete checkpoint) or a checkpoint file."""
    if not spec:
        raise EvalError("no checkpoint given: pass checkpoint=RUN_DIR (its newest checkpoint) or checkpoint=FILE.pt")
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = ckpt_io.list_checkpoints(path)
        if not found:
            raise EvalError(f"no checkpoint in {ckpt_io.checkpoint_dir(path)} (expected step_*.pt): train the run "
                            "first or pass checkpoint=PATH/TO/step_N.pt")
        return found[-1]
    raise EvalError(f"checkpoint={spec} does not exist: pass a run directory or a step_*.pt file")


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"eval.device={spec} but CUDA is not available: use eval.device=cpu or auto")
    return device


def _find_dataset(config: dict[str, Any], data_root: str | None) -> Path:
    data_cfg = as_data_config(config.get("data", {}))
    if data_root is not None:
        data_cfg = dataclasses.replace(data_cfg, root=data_root)
    folder = dataset_dir(data_cfg)
    if not (folder / "meta.json").is_file():
        raise EvalError(f"the run's prepared dataset {folder} (its tokenizer) was not found: set eval.data_root to "
                        f"the folder holding {data_cfg.name}/, or run `python -m data.prepare` with the run's data")
    return folder


def load(checkpoint: str | None, device: str = "auto", dtype: str = "auto", data_root: str | None = None) -> Loaded:
    """Load a checkpoint for evaluation: model (eval mode, no grad needed), tokenizer, config."""
    path = resolve_checkpoint(checkpoint)
    try:
        ckpt = ckpt_io.load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(str(e)) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise EvalError(f"{path} is not a checkpoint of this repo (no 'model' / 'config' entries)")
    config = ckpt["config"]
    try:
        model_cfg = ModelConfig(**config["model"])
        attn_cfg = AttentionConfig(**config["attention"])
    except TypeError as e:  # a field this code does not know (checkpoint from another version of the repo)
        raise EvalError(f"{path}: its model/attention config does not match this code ({e})") from None
    dev = pick_device(device)
    with torch.device("meta"):
        model = GPT(model_cfg, attn_cfg)
    model.to_empty(device=dev)
    model.init_weights()  # buffers (RoPE tables) are not in the state dict
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise EvalError(f"{path}: weights do not fit the model its config describes ({str(e)[:300]})") from None
    model.eval().requires_grad_(False)
    use_bf16 = dtype == "bf16" or (dtype == "auto" and dev.type == "cuda")
    folder = _find_dataset(config, data_root)
    return Loaded(
        model=model,
        tokenizer=load_tokenizer(folder),
        config=config,
        checkpoint=path,
        step=int(ckpt.get("step", 0)),
        tokens=int(ckpt.get("tokens", 0)),
        wandb_id=ckpt.get("wandb_id"),
        dataset_dir=folder,
        device=dev,
        dtype="bf16" if use_bf16 else "fp32",
    )


def sparsity(model: GPT, lengths: list[int], tokens: torch.Tensor | None = None) -> dict[str, Any]:
    """Keys each query attends to (mean over positions, per the attention module's own accounting) and the
    fraction of what full causal attention would see, at each length: the GPT interface only. For an NSA model
    with `tokens` [B, T] (held-out text), length T also gets "measured": what one forward of them really selected
    (keys per branch, blocks per query, and the distinct blocks per query if 4 neighbouring queries shared loads)."""
    attn = model.blocks[0].attn
    out: dict[str, Any] = {"attention": model.attn_cfg.name}
    if tokens is not None:
        lengths = [*lengths, tokens.shape[1]]
    for n in sorted(set(lengths)):
        keys = attn.attended_keys(n)
        dense = (n + 1) / 2
        out[str(n)] = {"keys_per_query": keys, "dense_keys_per_query": dense, "fraction": keys["total"] / dense}
    if tokens is not None and nsa_layers(model):
        stats = nsa_sparsity(model, tokens.shape[1], tokens)
        out[str(tokens.shape[1])]["measured"] = {k[len("measured_"):]: v for k, v in stats.items()
                                                 if k.startswith("measured_")}
    return out
