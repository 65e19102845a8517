"""`train(cfg)`: the training loop. train.py is only a Hydra wrapper around it.

Order of events: join the process group -> prepare data (rank 0, others wait) -> build and wrap the model
(DDP / FSDP2) and its optimizer -> resume (model, optimizer, step, data cursor, RNG) -> compile -> loop over
optimizer steps (gradient accumulation, clipping, non-finite guard) -> validate / log / checkpoint on schedule.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from data import TokenLoader, dataset_vocab_size, prepare
from model import GPT, flops_per_token, num_params
from training import checkpoint as ckpt_io
from training.config import Config, grad_accum_steps, to_dataclass, validate
from training.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    destroy_distributed,
    gradient_sync,
    init_distributed,
    rank_batches,
    wrap_model,
)
from training.metrics import MetricsLogger, console_line, memory_gb, peak_bf16_flops, truncate_metrics
from training.optim import build_optimizer
from training.probes import Probe, build_probes, probe_batches, probe_selection
from training.schedule import lr_at

log = logging.getLogger("train")


def autocast_context(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (unless train.dtype=fp32); plain fp32 on CPU unless train.dtype=bf16."""
    use_bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def prepare_dataset(cfg: Config, info: DistInfo) -> Path:
    """Rank 0 prepares (or reuses) the token shards; the others wait and receive the folder."""
    path = str(prepare(cfg.data)) if info.is_main else None
    barrier()
    return Path(all_gather_object(path)[0])


def batch_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Config, info: DistInfo
               ) -> torch.Tensor:
    """[loss summed over the scored tokens (y != -1), their count] of one batch, on the device, no host sync."""
    if uses_cuda_graphs(cfg):
        torch.compiler.cudagraph_mark_step_begin()
    with autocast_context(cfg, info.device):
        _, loss = model(x, y)
    count = (y != -1).sum()
    return torch.stack([torch.where(count > 0, loss.float() * count, 0.0), count.float()])


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset_dir: Path, cfg: Config, info: DistInfo,
             probes: dict[str, Probe] | None = None) -> dict[str, float]:
    """{"val_loss": ..., "val_probe_<kind>": ...}. The validation loss is the mean per token over the first
    N = val_tokens // seq_len sequences of the unshuffled validation stream: the same tokens every time and for
    any world size (rank r takes sequences r, r+W, ...; rows past N are ignored), so runs with different numbers
    of GPUs report comparable numbers. The retrieval probes (training/probes.py) are scored the same way."""
    seq_len, micro, world = cfg.model.max_seq_len, cfg.train.micro_batch_size, info.world_size
    n_seqs = max(1, cfg.train.val_tokens // seq_len)
    loader = TokenLoader(
        dataset_dir, "val", seq_len=seq_len, batch_size=micro, rank=info.rank, world_size=world,
        seed=cfg.train.seed, device=info.device, shuffle=False,
    )  # fmt: skip
    model.eval()

    def mean_loss(batches) -> float:  # loss per scored token over every rank's batches (nan: none scored)
        totals = torch.zeros(2, device=info.device)  # loss summed over tokens, tokens
        for x, y in batches:
            totals += batch_loss(model, x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True),
                                 cfg, info)
        loss_sum, tokens = all_reduce_sum(totals).tolist()
        return loss_sum / tokens if tokens else float("nan")

    def val_batches():
        for rows in rank_batches(n_seqs, micro, info.rank, world):
            x, y = loader.next_batch()
            y[rows.to(y.device) >= n_seqs] = -1
            yield x, y

    out = {"val_loss": mean_loss(val_batches())}
    loader.close()  # stops its prefetch thread (CUDA)
    for kind, probe in (probes or {}).items():
        out[f"val_probe_{kind}"] = mean_loss(probe_batches(probe.x, probe.y, micro, info.rank, world))
        if cfg.train.val_probe_selection:
            hit = probe_selection(model, probe, micro, info.rank, world, info.device,
                                  lambda: autocast_context(cfg, info.device))
            if hit is not None:
                out[f"val_probe_{kind}_selected"] = hit
    model.train()
    return out


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resolve_vocab(cfg: Config, dataset_dir: Path) -> None:
    """model.vocab_size=0 takes the tokenizer's size; a set size must be able to hold every token id."""
    vocab = dataset_vocab_size(dataset_dir)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab
    elif cfg.model.vocab_size < vocab:
        raise ValueError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {vocab} "
            f"({dataset_dir}): set model.vocab_size=0 to take it from the tokenizer"
        )


def build_model(cfg: Config, info: DistInfo) -> tuple[GPT, torch.nn.Module]:
    """(the GPT itself, the module to train: DDP/FSDP2-wrapped when world_size > 1)."""
    # Identical initial weights on every rank (FSDP2 does not broadcast them), then per-rank RNG streams.
    torch.manual_seed(cfg.train.seed)
    raw_model = GPT(cfg.model, cfg.attention).to(info.device)
    raw_model.checkpoint_blocks = cfg.train.activation_checkpointing
    torch.manual_seed(cfg.train.seed + info.rank)
    return raw_model, wrap_model(raw_model, info, cfg.train.parallel)


def train_loader(cfg: Config, info: DistInfo, dataset_dir: Path) -> TokenLoader:
    return TokenLoader(
        dataset_dir,
        "train",
        seq_len=cfg.model.max_seq_len,
        batch_size=cfg.train.micro_batch_size,
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.train.seed,
        device=info.device,
        mix=cfg.data.mix,
    )


def setup_backends(info: DistInfo) -> None:
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compile_model(model: torch.nn.Module, cfg: Config) -> None:
    """torch.compile `model` in place (parameter names and checkpoint keys stay clean) when train.compile."""
    if cfg.train.compile:
        model.compile(mode=cfg.train.compile_mode)


def uses_cuda_graphs(cfg: Config) -> bool:
    """Whether the compiled model replays CUDA graphs: each micro-step must then be marked as a new step."""
    return cfg.train.compile and cfg.train.compile_mode in ("reduce-overhead", "max-autotune")


def reset_grads(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], graphs: bool) -> None:
    """Clear the gradients before the next accumulation. Normally they are freed (set to None). With CUDA
    graphs they stay allocated and are zeroed: autograd would otherwise keep the first micro-step's gradient
    tensor itself as .grad, and that memory belongs to the graph, which the next micro-step's replay overwrites."""
    if not graphs:
        optimizer.zero_grad(set_to_none=True)
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            p.grad.zero_()


def train(cfg_node: DictConfig | Config) -> dict[str, Any]:
    """Train per the config; returns a summary (final loss, val loss, step, tokens)."""
    cfg = cfg_node if isinstance(cfg_node, Config) else to_dataclass(cfg_node)
    validate(cfg)
    info = init_distributed(cfg.train.device)
    summary = _train(cfg, info)
    # The model wrapper (DDP's reducer), the optimizer and the loaders sit in reference cycles, so they outlive
    # _train until a garbage collection: collect them now, while the process group is alive, rather than in the
    # interpreter's shutdown, where a gloo group torn down late aborted ~1 run in 7 under CPU load ("terminate
    # called without an active exception" after the last step).
    gc.collect()
    # Only on success: after an exception the other ranks may be blocked in a collective, and a collective
    # teardown would hang instead of letting torchrun report the error.
    destroy_distributed()
    return summary


def _train(cfg: Config, info: DistInfo) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    setup_backends(info)
    accum = grad_accum_steps(cfg, info.world_size)
    seq_len = cfg.model.max_seq_len

    dataset_dir = prepare_dataset(cfg, info)
    resolve_vocab(cfg, dataset_dir)
    probes = build_probes(list(cfg.train.val_probes), cfg.train.val_probe_samples, dataset_dir, seq_len)
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    raw_model, model = build_model(cfg, info)
    optimizer = build_optimizer(model, cfg.optim)
    loader = train_loader(cfg, info, dataset_dir)

    step, skipped, wandb_id = 0, 0, None
    resume_path = ckpt_io.find_resume_checkpoint(run_dir, cfg.train.resume)
    if resume_path is not None:
        ckpt = ckpt_io.load_checkpoint(resume_path)
        ckpt_io.check_compatible(ckpt["config"], config_dict, resume_path)
        ckpt_io.load_model_and_optimizer_state(model, optimizer, ckpt)
        step, skipped, wandb_id = ckpt["step"], ckpt["skipped_steps"], ckpt["wandb_id"]
        same_world = len(ckpt["rng"]) == info.world_size
        loader.load_state_dict(ckpt["loader"][info.rank if same_world else 0])
        if same_world:
            set_rng_state(ckpt["rng"][info.rank])
        del ckpt
    compile_model(model, cfg)
    graphs = uses_cuda_graphs(cfg)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config_dict))
        truncate_metrics(run_dir / "metrics.jsonl", step)
    logger = MetricsLogger(run_dir if info.is_main else None, cfg.logger, config_dict, wandb_id)

    flops_tok = flops_per_token(raw_model, seq_len)
    peak = peak_bf16_flops(info.device)
    sparsity = raw_model.blocks[0].attn.attended_keys(seq_len)
    if info.is_main:
        log.info(
            f"run_dir {run_dir} | params {num_params(raw_model) / 1e6:.2f}M | world {info.world_size} | "
            f"grad accum {accum} | {cfg.train.batch_tokens} tokens/step | device {info.device}"
            + (f" | resumed from {resume_path.name} at step {step}" if resume_path else "")
        )

    def save(at_step: int) -> None:
        model_sd, optim_sd = ckpt_io.model_and_optimizer_state(model, optimizer)
        rngs, loader_states = all_gather_object(rng_state()), all_gather_object(loader.state_dict())
        if info.is_main:
            payload = {
                "model": model_sd,
                "optimizer": optim_sd,
                "step": at_step,
                "tokens": at_step * cfg.train.batch_tokens,
                "skipped_steps": skipped,
                "loader": loader_states,
                "rng": rngs,
                "wandb_id": logger.wandb_id,
                "config": config_dict,
            }
            ckpt_io.save_checkpoint(run_dir, at_step, payload, cfg.train.keep_last)
        barrier()

    model.train()
    bad_in_row, last = 0, {}
    params = [p for p in model.parameters() if p.requires_grad]
    reset_grads(optimizer, params, graphs)
    # No host synchronisation per step: each step's [loss, grad norm] stays on the device until the next flush
    # (console line, validation, checkpoint, end), which reads all pending steps at once. A non-finite step is
    # skipped on the device (the fused AdamW's found_inf), so nothing has to be known on the host in time.
    pending: list[tuple[int, float, torch.Tensor]] = []  # (step, lr, stats [loss, grad norm])
    t_flush = time.perf_counter()

    def flush(validate: bool) -> None:
        """Log the pending steps (one metrics row each; with `validate`, the validation loss goes into the newest)
        and count the skipped ones."""
        nonlocal bad_in_row, skipped, last, t_flush
        values = torch.stack([stats for _, _, stats in pending]).tolist()  # the one host sync
        now = time.perf_counter()
        dt = (now - t_flush) / len(pending)  # mean step time since the last flush
        tok_per_s = cfg.train.batch_tokens / dt
        val = evaluate(model, dataset_dir, cfg, info, probes) if validate else None
        for (at, lr, _), (loss_val, norm_val) in zip(pending, values):
            if math.isfinite(loss_val) and math.isfinite(norm_val):
                bad_in_row = 0
            else:  # the optimizer skipped this update; give up after max_bad_steps in a row
                skipped += 1
                bad_in_row += 1
                if bad_in_row >= cfg.train.max_bad_steps:
                    raise RuntimeError(
                        f"{bad_in_row} optimizer steps in a row had a non-finite loss or gradient (last at step "
                        f"{at}): lower optim.lr, check the data, or resume from an earlier checkpoint"
                    )
            last = {
                "step": at,
                "tokens": at * cfg.train.batch_tokens,
                "loss": loss_val,
                "lr": lr,
                "grad_norm": norm_val,
                "tok_per_s": tok_per_s,
                "mfu": flops_tok * tok_per_s / (peak * info.world_size) if peak else None,
                "mem_gb": memory_gb(info.device),
                "step_time": dt,
                "skipped_steps": skipped,
            }
            if at == 1:
                last.update({f"attn_keys_{k}": v for k, v in sparsity.items()})
            if at == pending[-1][0] and val is not None:
                last.update(val)
            logger.log(last)
        pending.clear()
        t_flush = time.perf_counter()  # validation and logging are not training time

    while step < cfg.train.steps:
        loss_sum = torch.zeros((), device=info.device)
        for micro in range(accum):
            x, y = loader.next_batch()
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with gradient_sync(model, enabled=micro == accum - 1), autocast_context(cfg, info.device):
                _, loss = model(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach().float()
        max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
            grad_norm = grad_norm.full_tensor()
        stats = all_reduce_mean(torch.stack([loss_sum / accum, grad_norm.float()]))
        lr = lr_at(step, cfg.optim.schedule_steps or cfg.train.steps, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.found_inf = (~torch.isfinite(stats).all()).float()  # 1: the fused AdamW leaves every state as is
        optimizer.step()
        reset_grads(optimizer, params, graphs)
        step += 1
        pending.append((step, lr, stats))
        is_last = step == cfg.train.steps
        do_val = bool(cfg.train.val_interval and step % cfg.train.val_interval == 0) or is_last
        do_log = step % cfg.train.log_interval == 0 or step == 1 or is_last
        do_ckpt = bool(cfg.train.ckpt_interval and step % cfg.train.ckpt_interval == 0) or is_last
        if do_val or do_log or do_ckpt:
            flush(do_val)
            if info.is_main and do_log:
                log.info(console_line(last, cfg.train.steps))
        if do_ckpt:
            save(step)

    loader.close()
    logger.close()
    return {"step": step, "loss": last.get("loss"), "val_loss": last.get("val_loss"), "run_dir": str(run_dir)}
