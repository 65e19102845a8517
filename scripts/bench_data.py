"""Data pipeline throughput on this machine: prepare (tokens/s, per core) and the loader's read rate.

    .venv/bin/python scripts/bench_data.py                    # the offline default dataset (stdlib sources)
    .venv/bin/python scripts/bench_data.py --max-tokens 20000000 --seq-len 2048 --batch-size 8

Prepare is timed end to end on the default source (loading the files through `datasets`, tokenizing with
datasets.map over num_proc processes, writing shards), with a fixed tokenizer so BPE training is timed
separately. The loader is timed on the prepared train split, without and with a synthetic long-context mix.
Everything is written to a temporary directory and removed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def bench_prepare(args) -> Path:
    """Times prepare on the default source; returns the prepared directory (inside args.tmp)."""
    import json

    import datasets

    from data import DataConfig, prepare

    datasets.disable_progress_bars()
    cores = os.cpu_count() or 1
    procs = args.num_proc or sorted({1, cores})
    base = dict(root=args.tmp, cache_dir=f"{args.tmp}/hf", max_tokens=args.max_tokens, vocab_size=args.vocab_size)
    t = time.perf_counter()
    first = prepare(DataConfig(name="bpe", num_proc=cores, **base))
    t_all = time.perf_counter() - t
    meta = json.loads((first / "meta.json").read_text())
    n_tok = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    print(f"machine: {cores} CPU cores; source: stdlib .py files ({meta['source']['files']} files); "
          f"{n_tok:,} tokens, vocab {meta['vocab_size']}")
    print(f"prepare with BPE training (tokenizer_train_chars={DataConfig.tokenizer_train_chars:,}): {t_all:.2f} s")
    for n in procs:
        t = time.perf_counter()
        prepare(DataConfig(name=f"np{n}", num_proc=n, tokenizer=str(first / "tokenizer.json"), **base))
        dt = time.perf_counter() - t
        print(f"prepare, given tokenizer, num_proc={n}: {dt:.2f} s = {n_tok / dt:,.0f} tokens/s "
              f"({n_tok / dt / cores:,.0f} per core)")
    return first


def bench_loader(dataset_dir: Path, args) -> None:
    """Times next_batch (on args.device: includes the host-to-device copy) without and with a mix."""
    import torch

    from data import MixConfig, TokenLoader

    for mix in (None, MixConfig(rate=0.05)):
        ld = TokenLoader(dataset_dir, "train", seq_len=args.seq_len, batch_size=args.batch_size, mix=mix,
                         device=args.device)
        ld.next_batch()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < args.seconds:
            x, y = ld.next_batch()
            n += 1
        if x.is_cuda:
            torch.cuda.synchronize()
        rate = n * args.batch_size * args.seq_len / (time.perf_counter() - t)
        ld.close()
        label = "no mix" if mix is None else f"mix rate {mix.rate}"
        print(f"loader ({label}, batch {args.batch_size} x seq {args.seq_len}, device {args.device}): "
              f"{rate:,.0f} tokens/s = {rate / args.gpu_tokens_per_s:,.0f}x a {args.gpu_tokens_per_s:,.0f} tokens/s "
              "GPU step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-tokens", type=int, default=10_000_000, help="prepare budget (tokens)")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--num-proc", type=int, nargs="+", default=None, help="default: 1 and all cores")
    p.add_argument("--dataset", type=Path, default=None, help="time the loader on this prepared dataset only")
    p.add_argument("--device", default="cpu", help="loader device (cuda: pinned prefetch + non_blocking copy)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0, help="loader timing duration")
    p.add_argument("--gpu-tokens-per-s", type=float, default=500_000, help="a GPU step's appetite to compare to")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.dataset is not None:
        bench_loader(args.dataset, args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        bench_loader(bench_prepare(args), args)


if __name__ == "__main__":
    main()
