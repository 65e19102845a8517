"""Look, without a GPU, for shared-memory races in every Triton kernel NSA's launchers launch at the repo's head shapes.

    python scripts/race_scan.py                      # every shape below, G = 1 .. 16 at the main heads
    python scripts/race_scan.py --shapes main small  # some of them
    python scripts/race_scan.py --triton /tmp/t36    # with the GPU machine's Triton (pip install --target)

The launchers (kernels/triton_banded.py, triton_select.py, triton_selected.py) run on CPU tensors of each shape with
the shipped GPU tiles; each kernel launch is caught instead of run, typed from its arguments, compiled for sm_90a
(sass_report.compile_kernel) and its TTGIR checked by sass_report.inflight_overwrites: an async copy into a one-slot
buffer that a wgmma still in flight reads (the selected dK/dV's wrong dK, docs/benchmarks.md, twelfth session). Each
distinct build is listed once, with the shapes that launch it. Exit status 1 if any build is flagged.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_shapes import D_MAIN, HEAD_SHAPES, HQ, NSA  # noqa: E402  (plain constants: no torch, no triton)

# (Hq, Hkv, Dk, Dv): the benchmarks' head shapes, and the main heads at G = 1, 2, 4, 8
SHAPES = {**HEAD_SHAPES, **{f"main-G{g}": (HQ, HQ // g, D_MAIN, D_MAIN) for g in (1, 2, 4, 8)}}
T = 1024


def signature(fn, args: tuple, kwargs: dict) -> tuple[dict[str, str], dict, tuple[str, ...]]:
    """(types, constexprs, 16-divisible integers) of one launch, as Triton's JIT would specialise it."""
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    dtypes = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
              torch.int32: "i32", torch.int64: "i64"}
    types, div16 = {}, []
    for name, a in zip(fn.arg_names, args):
        if isinstance(a, torch.Tensor):
            types[name] = "*" + dtypes[a.dtype]
        elif isinstance(a, TensorDescriptor):
            types[name] = f"tensordesc<{dtypes[a.base.dtype]}[{', '.join(map(str, a.block_shape))}]>"
        elif isinstance(a, float):
            types[name] = "fp32"
        elif isinstance(a, int):
            types[name] = "i64" if abs(a) >= 2**31 else "i32"
            if a % 16 == 0:
                div16.append(name)
    consts = {p.name: p.default for p in fn.params if p.is_constexpr}  # the defaults of those not passed
    consts.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    consts = {k: ("fp32" if getattr(v, "name", None) == "fp32" else v) for k, v in consts.items()}
    return types, consts, tuple(div16)


def launches(shape: str) -> list[tuple]:
    """(kernel, types, constexprs, div16, warps, stages) of every launch of the forward and backward of NSA's
    attention ops at one shape (CPU tensors: the launches are recorded, not run)."""
    import torch
    from triton.runtime.jit import JITFunction

    from kernels import triton_banded, triton_select, triton_selected

    Hq, Hkv, Dk, Dv = SHAPES[shape]
    recorded = []

    def record(self, *args, grid, warmup, **kwargs):
        warps, stages = kwargs.pop("num_warps", 4), kwargs.pop("num_stages", 3)
        recorded.append((self, *signature(self, args, kwargs), warps, stages))

    gen = torch.Generator().manual_seed(0)
    q, k, do = (torch.randn(1, T, h, d, generator=gen).bfloat16() for h, d in ((Hq, Dk), (Hkv, Dk), (Hq, Dv)))
    v = torch.randn(1, T, Hkv, Dv, generator=gen).bfloat16()
    n_cmp = (T - NSA["block_size"]) // NSA["stride"] + 1
    n_blocks = T // NSA["select_size"]
    idx = torch.stack([torch.randperm(n_blocks, generator=gen)[:NSA["num_select"]].sort().values
                       for _ in range(T * Hkv)]).view(1, T, Hkv, -1).int()
    scale = 1 / math.sqrt(Dk)
    saved_run, saved_sm = JITFunction.run, triton_banded.sm_count
    JITFunction.run, triton_banded.sm_count = record, lambda device: 132  # an H100's SMs
    try:
        for ks, koff, win, keys in ((NSA["stride"], NSA["block_size"] - 1, -1, n_cmp), (1, 0, NSA["window"], T)):
            o, lse = triton_banded.band_forward(q, k[:, :keys], v[:, :keys], ks, koff, win, scale)
            lse = torch.zeros_like(lse)  # the forward did not run: give the backward finite statistics
            triton_banded.band_backward(do, None, q, k[:, :keys], v[:, :keys], o, lse, ks, koff, win, scale)
        triton_select.select_blocks(q, k[:, :n_cmp], lse, block_size=NSA["block_size"], stride=NSA["stride"],
                                    select_size=NSA["select_size"], num_select=NSA["num_select"], num_init=1,
                                    num_local=2, scale=scale)
        o, lse = triton_selected.selected_forward(q, k, v, idx, NSA["select_size"], scale)
        triton_selected.selected_backward(do, q, k, v, idx, o, torch.zeros_like(lse), NSA["select_size"], scale)
    finally:
        JITFunction.run, triton_banded.sm_count = saved_run, saved_sm
    return recorded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    p.add_argument("--triton", help="a folder holding another Triton package, put first on the import path")
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("race_scan.py builds the GPU kernels: run it without TRITON_INTERPRET=1")
    if args.triton:
        sys.path.insert(0, args.triton)
    sys.path.insert(0, str(REPO))
    import triton
    from sass_report import compile_kernel, inflight_overwrites

    builds: dict[tuple, list[str]] = {}
    for shape in args.shapes:
        for fn, types, consts, div16, warps, stages in launches(shape):
            key = (fn, tuple(sorted(types.items())), tuple(sorted(consts.items(), key=lambda kv: kv[0])), div16,
                   warps, stages)
            builds.setdefault(key, []).append(shape)
    print(f"triton {triton.__version__}, sm_90a: {len(builds)} distinct builds")
    flagged = 0
    for (fn, types, consts, div16, warps, stages), shapes in builds.items():
        race = inflight_overwrites(compile_kernel(fn, dict(types), dict(consts), div16, warps, stages).asm["ttgir"])
        flagged += bool(race)
        tiles = ", ".join(f"{k}={v}" for k, v in consts if k in ("G_PAD", "NPOS", "P", "BLOCK_N", "TMA", "KEY_MAJOR"))
        print(f"{fn.__name__} ({tiles}, warps {warps}, stages {stages}) [{' '.join(sorted(set(shapes)))}]: "
              + (f"RACE on {', '.join(race)}" if race else "ok"), flush=True)
    sys.exit(1 if flagged else 0)


if __name__ == "__main__":
    main()
