"""Process-group set-up and model wrapping: one code path for CPU, one GPU and torchrun (DDP / FSDP2)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.constants import default_pg_timeout
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun (NCCL on GPU, gloo on CPU), pick the device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA GPU is visible: use train.device=cpu or auto")
    rank, local_rank, world = (
        int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1))
    )
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None,
                                **_per_attempt_store(rank, world))
    return DistInfo(rank, local_rank, world, dev)


def _per_attempt_store(rank: int, world: int) -> dict:
    """init_process_group arguments that give each torchrun restart attempt its own key space in the store.

    Under torchrun the workers share the elastic agent's TCP store, and that store outlives a restart
    (`--max-restarts`): the keys of the dead attempt (gloo's peer addresses, NCCL's unique id) are still there,
    and the restarted group can read them and connect to processes that no longer exist ("connection refused",
    or a hang). A PrefixStore per attempt (TORCHELASTIC_RESTART_COUNT) keeps the attempts apart. Outside torchrun's
    agent store: {} (the default env:// rendezvous).
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=default_pg_timeout)
    return {"store": dist.PrefixStore(f"attempt_{attempt}", store), "rank": rank, "world_size": world}


def destroy_distributed() -> None:
    """Leave the process group once every rank is done (no rank tears down while a peer still talks to it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank_batches(n: int, micro: int, rank: int, world: int) -> list[torch.Tensor]:
    """The rows [micro] (int64) of each batch `rank` scores when `world` ranks share n rows as r, r+W, r+2W, ...:
    the same number of batches on every rank (FSDP2 forwards are collective); rows >= n are padding."""
    n_batches = math.ceil(math.ceil(n / world) / micro)
    return [rank + (b * micro + torch.arange(micro)) * world for b in range(n_batches)]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (in place; identity without a process group)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks (in place; identity without a process group)."""
    if dist.is_initialized():
        all_reduce_sum(t)
        t /= dist.get_world_size()
    return t


def all_gather_object(obj: object) -> list[object]:
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_model(model: nn.Module, info: DistInfo, parallel: str) -> nn.Module:
    """DDP or FSDP2 (per block, then the root) when world_size > 1; the model itself otherwise."""
    if info.world_size == 1:
        return model
    if parallel == "ddp":
        return DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch 2.5
        from torch.distributed._composable.fsdp import fully_shard
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on non-final micro-steps of gradient accumulation."""
    if isinstance(model, DDP) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield
