"""Interleaved A/B timing of kernel tile settings on the GPU.

Runs scripts/bench_attention.py (or, with `--bench train`, scripts/bench_train.py) once per variant per round,
round-robin (so drift of the card's clocks hits every variant alike), with each variant's tile overrides in
NSA_TRITON_TILES ({kernel: {"small"|"big"|"d64": {...}}}, as kernels/triton_common.py reads it), then prints, for
every NSA time the runs produced (training: step time and tokens/s), each variant's range over its runs. A variant
is NAME (the shipped tiles) or NAME=JSON.

    python scripts/ab_tiles.py --runs 3 --out-dir $OUT/ab --variant default \
        --variant 'tma={"selected_fwd": {"small": {"tma": 1}}}' -- --sections main --T 8192 65536
    python scripts/ab_tiles.py --bench train --runs 3 --variant default \
        --variant 'wdot={"select": {"small": {"wdot": 1}, "big": {"wdot": 1}}}' -- --steps 2 --warmup 3 \
        --breakdown-steps 0 -- model=small_gqa16 attention=nsa model.max_seq_len=65536 train.batch_tokens=262144 \
        train.micro_batch_size=1 train.compile=true train.compile_mode=reduce-overhead

Everything after the first `--` goes to the benchmark. Each run's JSON is kept as OUT_DIR/<name>_<round>.json and
the table as OUT_DIR/ab.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def parse_variant(spec: str) -> tuple[str, dict]:
    """"name" or "name={json}" -> (name, tile overrides)."""
    name, _, text = spec.partition("=")
    if not name or "/" in name:
        raise SystemExit(f"bad --variant {spec!r}: give NAME or NAME=JSON (NAME without '/')")
    try:
        tiles = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"bad --variant {spec!r}: its JSON does not parse ({e})") from None
    if not isinstance(tiles, dict) or not all(isinstance(v, dict) for v in tiles.values()):
        raise SystemExit(f"bad --variant {spec!r}: give {{kernel: {{size: {{option: value}}}}}}")
    return name, tiles


def nsa_times(result: dict) -> dict[str, float]:
    """{"section T key": ms} for every NSA time (not memory or counts) in one bench_attention.py JSON."""
    out = {}
    for section, rows in result.items():
        if not isinstance(rows, dict):
            continue
        for T, row in rows.items():
            nsa = row.get("nsa") if isinstance(row, dict) else None
            if isinstance(nsa, dict):
                out.update({f"{section} {T} {k}": v for k, v in nsa.items()
                            if isinstance(v, float) and k.endswith(("_fwd", "_fwdbwd"))})
    return out


def train_times(result: dict) -> dict[str, float]:
    """Step time (ms) and throughput (thousands of tokens/s) of one bench_train.py JSON."""
    return {"step ms": 1000 * result["step_time_s"], "k tokens/s": result["tokens_per_s"] / 1000}


# --bench NAME -> (the script each run is, what of its JSON the table compares)
BENCHES = {"attention": (Path(__file__).with_name("bench_attention.py"), nsa_times),
           "train": (Path(__file__).with_name("bench_train.py"), train_times)}


def table(times: dict[str, list[dict[str, float]]]) -> str:
    """One line per compared time: each variant's min-max over its runs (ms, or as the line's name says)."""
    names = list(times)
    keys = list(dict.fromkeys(k for runs in times.values() for run in runs for k in run))
    width = max([len(k) for k in keys] + [4])
    lines = [f"{'ms':<{width}} | " + " | ".join(f"{n:>15}" for n in names)]
    for key in keys:
        cells = []
        for n in names:
            vals = [run[key] for run in times[n] if key in run]
            cells.append(f"{min(vals):7.3f}-{max(vals):<7.3f}" if vals else f"{'-':>15}")
        lines.append(f"{key:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, help="NAME or NAME=JSON (tile overrides)")
    p.add_argument("--bench", choices=sorted(BENCHES), default="attention", help="which benchmark each run is")
    p.add_argument("--runs", type=int, default=2, help="rounds; every variant runs once per round")
    p.add_argument("--out-dir", default="ab_out")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the benchmark's arguments")
    args = p.parse_args()
    variants = dict(parse_variant(s) for s in args.variant)
    script, times_of = BENCHES[args.bench]
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
    for r in range(args.runs):
        for name, tiles in variants.items():
            env = dict(os.environ)
            env.pop("NSA_TRITON_TILES", None)
            if tiles:
                tiles_path = out / f"{name}.tiles.json"
                tiles_path.write_text(json.dumps(tiles))
                env["NSA_TRITON_TILES"] = str(tiles_path)
            result_path = out / f"{name}_{r}.json"
            print(f"[ab] round {r + 1}/{args.runs}: {name}", flush=True)
            done = subprocess.run([sys.executable, str(script), "--out", str(result_path), *bench_args], env=env)
            if done.returncode != 0 or not result_path.exists():
                print(f"[ab] {name} round {r + 1} failed (exit {done.returncode})", flush=True)
                continue
            times[name].append(times_of(json.loads(result_path.read_text())))
    text = table(times)
    (out / "ab.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
