"""Training throughput of an experiment config: tokens/s, MFU, peak memory and a step-time breakdown.

    python scripts/bench_train.py --steps 20 --warmup 5 --out bench.json -- model=small train.compile=true
    torchrun --standalone --nproc_per_node=2 scripts/bench_train.py -- model=small train.parallel=fsdp

Everything after `--` is a Hydra override of the training config (as for train.py). Two phases, warm-up
(compilation, allocator) excluded from both:
1. throughput: `--steps` optimizer steps exactly as train.py runs them (no extra synchronisation), timed as
   a whole -> tokens/s and MFU (dense bf16 peak of the card; FLOPs count attention by the keys attended);
2. breakdown: `--breakdown-steps` more steps with a device synchronisation after each phase, so
   data / forward / backward / optimizer times add up (the syncs slow these steps a little);
3. with `--profile FILE`: one more step under torch.profiler; FILE gets the ops and kernels by device time
   (self time, top 60) and FILE's stem + .json.gz the Chrome trace (open it in https://ui.perfetto.dev).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import flops_per_token, num_params  # noqa: E402
from training.config import grad_accum_steps, register_configs, to_dataclass, validate  # noqa: E402
from training.distributed import all_reduce_mean, destroy_distributed, gradient_sync, init_distributed  # noqa: E402
from training.metrics import peak_bf16_flops  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.trainer import (  # noqa: E402
    autocast_context,
    build_model,
    compile_model,
    prepare_dataset,
    reset_grads,
    resolve_vocab,
    setup_backends,
    train_loader,
    uses_cuda_graphs,
)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    config_dir = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return to_dataclass(hydra_compose(config_name="config", overrides=[*overrides, "run_dir=/tmp/bench_train"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps (throughput)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    parser.add_argument("--breakdown-steps", type=int, default=5, help="steps timed phase by phase")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--profile", type=Path, help="profile one more step: op/kernel table here (+ a trace)")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]

    cfg = compose(overrides)
    validate(cfg)
    info = init_distributed(cfg.train.device)
    setup_backends(info)
    dataset_dir = prepare_dataset(cfg, info)
    resolve_vocab(cfg, dataset_dir)
    raw_model, model = build_model(cfg, info)
    optimizer = build_optimizer(model, cfg.optim)
    loader = train_loader(cfg, info, dataset_dir)
    compile_model(model, cfg)
    graphs = uses_cuda_graphs(cfg)
    accum = grad_accum_steps(cfg, info.world_size)
    cuda = info.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(phases: dict[str, float] | None = None) -> None:
        """One optimizer step as the trainer does it; with `phases`, synchronise and time each phase."""

        def mark(name: str, t0: float) -> float:
            if phases is None:
                return t0
            sync()
            now = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now - t0
            return now

        t = time.perf_counter()
        for micro in range(accum):
            x, y = loader.next_batch()
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            t = mark("data", t)
            with gradient_sync(model, enabled=micro == accum - 1), autocast_context(cfg, info.device):
                _, loss = model(x, y)
                t = mark("forward", t)
                (loss / accum).backward()
            t = mark("backward", t)
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip or float("inf"))
        optimizer.step()
        reset_grads(optimizer, params, graphs)
        mark("optimizer", t)

    model.train()
    reset_grads(optimizer, params, graphs)
    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(info.device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = all_reduce_mean(torch.tensor(time.perf_counter() - t0, device=info.device)).item()
    phases: dict[str, float] = {}
    for _ in range(args.breakdown_steps):
        step(phases)

    if args.profile is not None:  # every rank steps (collectives), the main one writes
        profile_step(step, args.profile if info.is_main else None, cuda)

    seq_len = cfg.model.max_seq_len
    tok_per_s = cfg.train.batch_tokens * args.steps / elapsed
    flops_tok = flops_per_token(raw_model, seq_len)
    peak = peak_bf16_flops(info.device)
    result = {
        "device": torch.cuda.get_device_name(info.device) if cuda else "cpu",
        "world_size": info.world_size,
        "torch": torch.__version__,
        "overrides": overrides,
        "model": {"params": num_params(raw_model), "seq_len": seq_len, "attention": cfg.attention.name},
        "attended_keys": raw_model.blocks[0].attn.attended_keys(seq_len),
        "batch_tokens": cfg.train.batch_tokens,
        "micro_batch_size": cfg.train.micro_batch_size,
        "grad_accum": accum,
        "compile": cfg.train.compile,
        "compile_mode": cfg.train.compile_mode,
        "activation_checkpointing": cfg.train.activation_checkpointing,
        "step_time_s": elapsed / args.steps,
        "tokens_per_s": tok_per_s,
        "tokens_per_s_per_device": tok_per_s / info.world_size,
        "flops_per_token": flops_tok,
        "mfu": flops_tok * tok_per_s / (peak * info.world_size) if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated(info.device) / 1e9 if cuda else None,
        # what the caching allocator holds at the end: with CUDA graphs (compile_mode=reduce-overhead) the
        # activations live in the graphs' memory pool, allocated while capturing in the warm-up, so the peak
        # of the timed steps above leaves them out and only this counts them
        "reserved_mem_gb": torch.cuda.memory_reserved(info.device) / 1e9 if cuda else None,
        "breakdown_s_per_step": {k: v / args.breakdown_steps for k, v in phases.items()},
    }
    if info.is_main:
        mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a"
        mem = (f"{result['peak_mem_gb']:.1f} GB (reserved {result['reserved_mem_gb']:.1f})"
               if result["peak_mem_gb"] is not None else "n/a")
        print(f"{result['device']} x{info.world_size} | {cfg.attention.name} T={seq_len} | "
              f"{result['model']['params'] / 1e6:.1f}M params | {tok_per_s / 1e3:.1f}k tok/s | MFU {mfu} | "
              f"peak mem {mem} | step {1e3 * result['step_time_s']:.1f} ms")  # fmt: skip
        breakdown = result["breakdown_s_per_step"].items()
        print("breakdown (ms/step): " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in breakdown))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    destroy_distributed()


def profile_step(step, path: Path | None, cuda: bool) -> None:
    """Run step() once under torch.profiler; write the table of ops/kernels by self device time to `path`
    (nothing when None)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    if path is None:
        return
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=60, max_name_column_width=70) + "\n")
    trace = path.with_suffix(".json.gz")
    prof.export_chrome_trace(str(trace))  # torch gzips a path ending in .gz
    by_grid = kernels_by_grid(trace)
    if by_grid:
        with path.open("a") as f:
            f.write("\nGPU kernels by launch grid (one op can launch several shapes):\n" + by_grid + "\n")
    print(f"profile: {path} (+ {trace.name})")


def kernels_by_grid(trace: Path, top: int = 30) -> str:
    """A table of the GPU kernels in a Chrome trace grouped by (name, grid, block): calls, mean us, total ms,
    largest total first. The profiler's own table sums a kernel's launches of every shape; this one tells, e.g.,
    the compressed branch's dK/dV (few key tiles, split queries) from the window's (docs/benchmarks.md)."""
    events = json.loads(gzip.open(trace).read())["traceEvents"]
    groups: dict[tuple, list[float]] = {}
    for e in events:
        if e.get("cat") == "kernel":
            args = e.get("args", {})
            key = (e["name"], tuple(args.get("grid", ())), tuple(args.get("block", ())))
            groups.setdefault(key, []).append(e["dur"])
    rows = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    lines = [f"{'total ms':>9} {'calls':>6} {'mean us':>9}  grid / block  kernel"] if rows else []
    for (name, grid, block), durs in rows:
        lines.append(f"{sum(durs) / 1e3:9.2f} {len(durs):6d} {sum(durs) / len(durs):9.1f}  {grid} / {block}  "
                     f"{name[:90]}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
