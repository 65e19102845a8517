"""Eval throughput: prefill and KV-cache decode tokens/s of evaluation.generation.greedy_generate.

    python scripts/bench_eval.py                                      # tiny model, full vs nsa_tiny, CPU
    python scripts/bench_eval.py --model small --attention full nsa --lengths 1024 4096 --batch 1 8 --device cuda

Models are randomly initialised from the configs (configs/model/, configs/attention/): speed does not depend
on the weights. Each row: one greedy_generate call on `batch` random prompts of `length` tokens producing
`--new` tokens each (after one warm-up call); prefill tok/s = batch * length / prefill time, decode tok/s =
batch * (new - 1) / decode time. Prints a markdown table (docs/eval.md has the numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.generation import Throughput, greedy_generate  # noqa: E402
from model import GPT, num_params  # noqa: E402
from training.config import register_configs, to_dataclass  # noqa: E402


def build(model: str, attention: str, vocab: int, max_len: int, device: torch.device) -> GPT:
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        cfg = to_dataclass(compose(config_name="config", overrides=[f"model={model}", f"attention={attention}",
                                                                     "run_dir=unused"]))
    cfg.model.vocab_size = vocab
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, max_len)
    torch.manual_seed(0)
    return GPT(cfg.model, cfg.attention).to(device).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--attention", nargs="+", default=["full", "nsa_tiny"])
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 512])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    p.add_argument("--new", type=int, default=16)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    args = p.parse_args()
    device = torch.device(args.device)
    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, " \
        f"{torch.get_num_threads()} threads)"
    print(f"device: {name}, dtype: {'bf16' if bf16 else 'fp32'}, torch {torch.__version__}\n")
    print("| model | attention | params | batch | length | new | prefill tok/s | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for attention in args.attention:
        model = build(args.model, attention, args.vocab, max(args.lengths) + args.new, device)
        for length in args.lengths:
            for batch in args.batch:
                g = torch.Generator().manual_seed(length)
                prompts = torch.randint(0, args.vocab, (batch, length), generator=g).tolist()
                greedy_generate(model, prompts, 2, batch_size=batch, autocast=autocast)  # warm-up
                stats = Throughput()
                greedy_generate(model, prompts, args.new, batch_size=batch, autocast=autocast, stats=stats)
                s = stats.as_dict()
                print(f"| {args.model} | {attention} | {num_params(model) / 1e6:.2f}M | {batch} | {length} | "
                      f"{args.new} | {s['prefill_tok_s']:,.0f} | {s['decode_tok_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
