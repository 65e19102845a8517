"""Benchmark NSA's Triton kernels against full attention (PyTorch SDPA, flash and cuDNN backends).

    python scripts/bench_attention.py --out bench.json            # everything below (one H100: ~3 min)
    python scripts/bench_attention.py --T 8192 32768 --sections main

Sections (bf16, B=1, causal; NSA with the paper's sizes l=32, d=16, l'=64, n=16, w=512):
- main:  Hq=64, Hkv=4, D=128 at each T: SDPA flash and cuDNN, NSA per branch (compressed attention,
         block selection, selected attention, window attention) and in total; forward and
         forward+backward time (median of CUDA-event timings), speed-ups, peak memory.
- gsweep: NSA at T=32k, Hq=64, Hkv=Hq/G for G in 1, 2, 4, 8, 16 (small G under-fills the tensor cores).
- paper: the paper's kernel shape Dk=192, Dv=128, Hq=64 in 4 groups (G=16).
- profile: CUDA time per kernel of one NSA forward+backward (main shape, T=32k), from torch.profiler.
- host:  host (CPU) microseconds per call of each op, forward and forward+backward, at a tiny shape
         (T=1024, the small model's Hq=16, Hkv=1, D=64) where the GPU work is negligible: what the
         Python side of the ops costs (argument handling, Triton's launcher, the backward's index build),
         next to an empty Triton kernel's launch and an eager torch op.
- share: selected attention alone (forward, forward+backward) with the block-sharing kernels (share = P
         positions per program load the union of their blocks once; kernels/triton_selected.py) against the
         one-position kernel (share 1), on the random inputs' selections and on selections made to agree
         between neighbours (each position copies its predecessor's blocks with probability `keep`), next
         to eval.py's sharing statistic (distinct blocks per query when 4 neighbours share): trained models
         measured 6.2 of 15.1 (docs/results/gpu-small). Main shape at 8k and 32k, the small model's shape
         (Hq=16, Hkv=1, D=64) at 8k, G = 1, 2, 4 and 8 (Hq=64) at 8k, and G = 4 at 32k.
- compressed: compressed attention alone through each backend (kernels.cudnn_compressed.BACKENDS: the Triton
         banded kernel, cuDNN's fused attention on a strided view, the latter with each way of sharing the KV
         head: kernels/cudnn_compressed.py KV_LAYOUTS), forward and forward+backward, at each T for the main,
         small-model and paper heads, with each cuDNN variant's relative error against the Triton kernel's
         outputs and gradients.
- peak:  the card's measured dense bf16 matmul rate (8192^3) and memory bandwidth (bench_decode.py's copy and
         read passes), the denominators of the floors below.
- floors (printed with the table, and alone for an existing JSON: --floors-from FILE, no GPU needed): for each
         NSA kernel of the main shape, its FLOPs and the HBM bytes it cannot avoid, the time floor
         max(FLOPs / peak, bytes / bandwidth), and the measured time against it. Without a "peak" section in
         the JSON, --peak-tflops / --bw-gbps (default: the H100 SXM's dense bf16 spec and its measured read
         bandwidth in docs/benchmarks.md).
- tune: at T=32k (--tune-T) and the main shape (or --tune-shape small: the small_gqa16 model's heads; paper: Dk=192,
  Dv=128, the "big" tiles), times each kernel family with alternative tile sizes (GPU_TILES in
  kernels/triton_common.py), greedily, checking every alternative's outputs/gradients against the current
  config's (relative error < 1e-2, selections >= 99% equal) and that a second run repeats them; the winners
  are kept for the sections after it and written to --tiles-out (usable as NSA_TRITON_TILES=...). Run it first.
NSA "total" is the four kernels as the model calls them: compressed -> select -> selected, window, and
the sum of the three branch outputs (the gates are elementwise and left out); its backward runs every
backward kernel. Full attention expands K/V to Hq heads beforehand (untimed): GQA costs the same FLOPs.
Results go to --out as JSON (written after every measurement, atomically) and a table is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_shapes import D_MAIN, HEAD_SHAPES, HKV, HQ, NSA, SMALL_HEADS  # noqa: E402

import kernels  # noqa: E402
from common.files import write_text_atomic  # noqa: E402
from kernels import cudnn_compressed  # noqa: E402  (no triton: --floors-from runs without it)
from kernels.reference import num_compressed_tokens  # noqa: E402


def timed(fn, budget_ms: float = 800.0, max_reps: int = 20, warmup_ms: float = 100.0) -> float:
    """Median milliseconds of fn() over CUDA-event-timed repetitions, after warm-up calls that keep the GPU busy
    for warmup_ms (at least two): a GPU left idle (the tune section compiles each alternative first) may start
    at a lower clock, and the first timing of a tune came out 2-16% above the same tiles timed again later."""
    t0 = time.perf_counter()
    for i in itertools.count():
        fn()
        torch.cuda.synchronize()
        if i >= 1 and (time.perf_counter() - t0) * 1e3 >= warmup_ms:
            break
    times = []
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if len(times) >= max_reps or (len(times) >= 3 and sum(times) > budget_ms):
            return statistics.median(times)


def peak_mib(fn) -> float:
    """Peak device memory allocated during fn() beyond what was allocated before, in MiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def fwd_bwd(forward, inputs):
    """A closure running forward() then the backward of all its outputs w.r.t. inputs (random grad_out)."""
    out = forward()
    grad = torch.randn_like(out)

    def run():
        torch.autograd.grad(forward(), inputs, grad)
    del out
    return run


# ----------------------------------------------------------------------------------------------
# workloads


def make_inputs(B, T, Hq, Hkv, Dk, Dv, *, grad: bool):
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16).requires_grad_(grad)
    Tc = num_compressed_tokens(T, NSA["block_size"], NSA["stride"])
    return dict(q=r(B, T, Hq, Dk), k_cmp=r(B, Tc, Hkv, Dk), v_cmp=r(B, Tc, Hkv, Dv), k_slc=r(B, T, Hkv, Dk),
                v_slc=r(B, T, Hkv, Dv), k_win=r(B, T, Hkv, Dk), v_win=r(B, T, Hkv, Dv))


def nsa_branches(x):
    """Closures for each NSA branch and for the whole forward (inputs in x)."""
    q, s = x["q"], NSA

    def cmp():
        return kernels.compressed_attention(q, x["k_cmp"], x["v_cmp"], block_size=s["block_size"],
                                            stride=s["stride"])

    def select(lse):
        return kernels.select_blocks(q, x["k_cmp"], lse, block_size=s["block_size"], stride=s["stride"],
                                     select_size=s["select_size"], num_select=s["num_select"])

    def slc(idx):
        return kernels.selected_attention(q, x["k_slc"], x["v_slc"], idx, select_size=s["select_size"])

    def win():
        return kernels.window_attention(q, x["k_win"], x["v_win"], window=s["window"])

    def total():
        o_cmp, lse = cmp()
        return o_cmp + slc(select(lse)) + win()
    return cmp, select, slc, win, total


def nsa_workloads(x) -> dict:
    """{name: closure} of the NSA workloads on inputs x: each branch's forward (selection inputs precomputed),
    the whole forward, and the forward+backward of the three attention branches and of the whole."""
    cmp, select, slc, win, total = nsa_branches(x)
    with torch.no_grad():
        _, lse = cmp()
        idx = select(lse)
    return {
        "cmp_fwd": lambda: cmp(),
        "select_fwd": lambda: select(lse),
        "slc_fwd": lambda: slc(idx),
        "win_fwd": win,
        "total_fwd": total,
        "cmp_fwdbwd": fwd_bwd(lambda: cmp()[0], [x["q"], x["k_cmp"], x["v_cmp"]]),
        "slc_fwdbwd": fwd_bwd(lambda: slc(idx), [x["q"], x["k_slc"], x["v_slc"]]),
        "win_fwdbwd": fwd_bwd(win, [x["q"], x["k_win"], x["v_win"]]),
        "total_fwdbwd": fwd_bwd(total, list(x.values())),
    }


def bench_nsa(B, T, Hq, Hkv, Dk, Dv) -> dict:
    x = make_inputs(B, T, Hq, Hkv, Dk, Dv, grad=True)
    work = nsa_workloads(x)
    res = {name: timed(fn) for name, fn in work.items()}
    run = work["total_fwdbwd"]
    res["peak_fwdbwd_mib"] = peak_mib(run)
    # the fraction of keys a query sees (selection + window + compressed tokens), at the last position
    res["keys_per_query_last"] = NSA["num_select"] * NSA["select_size"] + NSA["window"] + x["k_cmp"].shape[1]
    return res


def bench_sdpa(B, T, Hq, Dk, Dv, backend_name: str) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(d):  # [B, H, T, D] views of BTHD storage, as a model would pass them
        return torch.randn(B, T, Hq, d, generator=g, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    q, k, v = (r(d).requires_grad_() for d in (Dk, Dk, Dv))

    def fwd():
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    res = {"fwd": timed(fwd)}
    run = fwd_bwd(fwd, [q, k, v])
    res["fwdbwd"] = timed(run)
    res["peak_fwdbwd_mib"] = peak_mib(run)
    return res


def bench_compressed_backends(B, T, Hq, Hkv, Dk, Dv) -> dict:
    """Compressed attention through each backend: {variant: {fwd, fwdbwd ms, err}} where the variants are "triton"
    and "cudnn" / "cudnn-broadcast" / "cudnn-copied" (kernels/cudnn_compressed.py KV_LAYOUTS), err being the largest
    relative error against Triton's outputs and gradients; a variant that fails holds its error message."""
    from kernels import ops
    x = make_inputs(B, T, Hq, Hkv, Dk, Dv, grad=True)
    ins = [x["q"], x["k_cmp"], x["v_cmp"]]
    grad = torch.randn(B, T, Hq, Dv, device=x["q"].device, dtype=x["q"].dtype)
    variants = [("triton", "triton", cudnn_compressed.KV_LAYOUT)] + [
        ("cudnn" if kv == "shared" else f"cudnn-{kv}", "cudnn", kv) for kv in cudnn_compressed.KV_LAYOUTS]
    res, first = {}, None
    saved = ops.COMPRESSED_BACKEND, cudnn_compressed.KV_LAYOUT
    for name, backend, kv in variants:
        ops.COMPRESSED_BACKEND, cudnn_compressed.KV_LAYOUT = backend, kv

        def cmp():
            return kernels.compressed_attention(*ins, block_size=NSA["block_size"], stride=NSA["stride"])

        try:
            o, lse = cmp()
            out = [o, lse[torch.isfinite(lse)], *torch.autograd.grad(o, ins, grad)]
            res[name] = {"fwd": timed(cmp), "fwdbwd": timed(fwd_bwd(lambda: cmp()[0], ins))}
            if first is None:
                first = out
            else:
                res[name]["err"] = max(_rel(a, b) for a, b in zip(out, first))
            del o, lse, out
        except Exception as e:  # a layout cuDNN rejects is a result
            res[name] = {"error": error_text(e)}
        torch.cuda.empty_cache()
    ops.COMPRESSED_BACKEND, cudnn_compressed.KV_LAYOUT = saved
    return res


def profile_nsa(B, T, Hq, Hkv, Dk, Dv) -> dict:
    """{kernel name: [calls, total CUDA ms]} over one NSA forward+backward, largest first."""
    from torch.profiler import ProfilerActivity, profile
    x = make_inputs(B, T, Hq, Hkv, Dk, Dv, grad=True)
    run = fwd_bwd(nsa_branches(x)[-1], list(x.values()))
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        cuda_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if cuda_us > 0:
            rows[e.key[:80]] = [e.count, round(cuda_us / 1000, 3)]
    return dict(sorted(rows.items(), key=lambda kv: -kv[1][1])[:25])


def host_us(fn, calls: int = 200) -> float:
    """Host microseconds per fn() call: `calls` calls back to back, no synchronisation inside (after warm-up)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    return round(1e6 * host / calls, 1)


def bench_host() -> dict:
    """Host cost per call of each op at a tiny shape (small-model heads, T=1024), and two floors."""
    import triton
    import triton.language as tl

    from kernels.triton_banded import band_forward

    @triton.jit
    def _empty(X, n):
        if n < 0:
            tl.store(X, 0.0)

    @triton.jit
    def _empty_30_ints(X, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
                       c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, D: tl.constexpr):
        if a0 < 0:
            tl.store(X, 0.0)

    x = make_inputs(1, 1024, 16, 1, 64, 64, grad=True)
    buf = torch.zeros(1, device="cuda")
    ints = list(range(3, 33))
    q, k = x["q"].detach(), x["k_win"].detach()
    res = {"triton_empty_launch": host_us(lambda: _empty[(1,)](buf, 1)),
           "triton_empty_launch_30_ints": host_us(lambda: _empty_30_ints[(1,)](buf, *ints, D=64)),
           "torch_add": host_us(lambda: buf.add(1.0)),
           # the launcher under the window op without the custom-op layer and the input checks
           "band_forward_launcher": host_us(lambda: band_forward(q, k, k, 1, 0, 512, 0.125))}
    res.update({name: host_us(fn) for name, fn in nsa_workloads(x).items()})
    return res


def agree_with_neighbours(idx: torch.Tensor, keep: float, gen: torch.Generator) -> torch.Tensor:
    """idx [B,T,Hkv,n] where each position takes its predecessor's row with probability `keep` (runs of equal
    choices, as trained models make; a copied row stays valid: its blocks start before the earlier position)."""
    T = idx.shape[1]
    reset = torch.rand(T, generator=gen, device=idx.device) >= keep
    reset[0] = True
    src = torch.where(reset, torch.arange(T, device=idx.device), 0).cummax(0).values
    return idx[:, src]


def selection_inputs(B, T, Hq, Hkv, D, Dv=None):
    """Random inputs x (with gradients; head dims D and Dv, default D), their branch closures, and the compression
    lse and block choices."""
    x = make_inputs(B, T, Hq, Hkv, D, Dv or D, grad=True)
    branches = nsa_branches(x)
    with torch.no_grad():
        _, lse = branches[0]()
        idx = branches[1](lse)
    return x, branches, lse, idx


def bench_share(B, T, Hq, Hkv, D) -> dict:
    """The share section (module docstring): {keep: {sharing statistics, share P: fwd / fwdbwd ms, error}}."""
    from kernels import triton_common
    from model.attention.nsa import _blocks_shared
    x, (_, _, slc, _, _), _, idx = selection_inputs(B, T, Hq, Hkv, D)
    gen = torch.Generator(device=idx.device).manual_seed(1)
    tiles = [triton_common.GPU_TILES[k]["small" if D <= 128 else "big"] for k in ("selected_fwd", "selected_dq")]
    res = {}
    for keep in (0.0, 0.5, 0.8, 0.9):
        ids = agree_with_neighbours(idx, keep, gen) if keep else idx
        row = {"slc_blocks": _blocks_shared(ids, 1), "slc_blocks_shared4": _blocks_shared(ids, 4)}
        base = None
        for share in (1, 2, 4, 8):
            def fwd(ids=ids):
                return slc(ids)
            with triton_common.tiles_set(*tiles, share=share, pack_below_g=0):  # 1: one position at every G
                out = fwd()
                base = out if base is None else base
                row[f"share{share}"] = {"fwd": timed(fwd), "fwdbwd": timed(fwd_bwd(fwd, [x["q"], x["k_slc"],
                                                                                      x["v_slc"]])),
                                        "rel_err_vs_share1": _rel(out, base)}
        res[str(keep)] = row
    return res


# alternatives tried by the tune section, per kernel, on the GPU_TILES entry of the tuned head dim; the current
# config first
TUNE = {
    "band_fwd": [dict(rows=128, block_n=128, warps=8, stages=3),
                 dict(rows=64, block_n=64, warps=4, stages=3),
                 dict(rows=128, block_n=64, warps=8, stages=4), dict(rows=128, block_n=64, warps=4, stages=3),
                 dict(tma=1), dict(tma=1, rows=128, block_n=64, warps=8, stages=3)],
    "band_dkdv": [dict(split_waves=1), dict(split_waves=8), dict(rows=32, block_n=64, warps=4, stages=2),
                  dict(rows=32, block_n=64, warps=8, stages=2),
                  dict(rows=64, block_n=32, warps=4, stages=2), dict(rows=128, block_n=64, warps=8, stages=2),
                  dict(rows=64, block_n=128, warps=8, stages=2), dict(rows=64, block_n=64, warps=8, stages=3),
                  dict(rows=128, block_n=128, warps=8, stages=2), dict(rows=128, block_n=64, warps=4, stages=2),
                  dict(rows=128, block_n=64, warps=8, stages=3), dict(rows=256, block_n=64, warps=8, stages=2)],
    "band_dq": [dict(rows=128, block_n=64, warps=8, stages=2),
                dict(rows=64, block_n=64, warps=4, stages=2),
                dict(rows=128, block_n=32, warps=8, stages=3), dict(rows=64, block_n=32, warps=4, stages=3),
                dict(tma=1), dict(tma=1, stages=3), dict(fused_delta=0)],
    "select": [dict(rows=64), dict(rows=128, warps=8), dict(stages=3), dict(tma=1), dict(tma=1, stages=3),
               dict(rows=256, warps=8), dict(rows=64, warps=2), dict(wdot=0), dict(wdot=0, rows=64)],
    "selected_fwd": [dict(warps=4, stages=3), dict(warps=2, stages=3), dict(warps=2, stages=2),
                     dict(warps=2, stages=3, block_n=32), dict(warps=2, stages=4, block_n=32),
                     dict(warps=4, stages=4, block_n=32), dict(tma=1), dict(tma=1, stages=3),
                     dict(tma=1, warps=4, stages=3)],
    "selected_dq": [dict(warps=4, stages=3), dict(warps=2, stages=3), dict(warps=2, stages=2),
                    dict(warps=2, stages=3, block_n=32), dict(warps=4, stages=3, block_n=32), dict(tma=1),
                    dict(tma=1, stages=3), dict(tma=1, warps=2, stages=3), dict(fused_delta=0)],
    # pipelined (stages > 1) only where every product is a wgmma (key-major with 64-key steps, or row-major at 64
    # rows): then Q/dO get two buffers; otherwise it races (GPU_TILES["selected_dkdv"], scripts/race_scan.py). Each
    # alternative names key_major and stages, so that it means the same on a row-major base ("big") as on key-major.
    "selected_dkdv": [dict(key_major=1, block_n=64, stages=1), dict(key_major=1, block_n=64, stages=2),
                      dict(key_major=1, block_n=64, stages=3), dict(key_major=1, block_n=64, warps=8, stages=2),
                      dict(key_major=1, block_n=64, rows=16, stages=2), dict(key_major=1, block_n=32, stages=1),
                      dict(seg_len=128), dict(seg_len=1024), dict(key_major=0, stages=1),
                      dict(key_major=0, rows=16, stages=1), dict(key_major=0, rows=64, warps=8, stages=3),
                      dict(atomic=1)],
}
# (Hq, Hkv, Dk, Dv) of the head shapes the tune section (--tune-shape; "paper" tunes the "big" tiles, head dims
# past 128) and the compressed section (all three) run at


def _rel(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _repeat_err(run, first: list[torch.Tensor]) -> float:
    """How far a second run's outputs lie from the first's (max relative error): ~1e-5 where only float32
    atomics' order differs; more means a race (a dK/dV tile once gave 1e-2, twelfth session)."""
    return max(_rel(a, b) if a.is_floating_point() else float(not torch.equal(a, b)) for a, b in zip(run(), first))


def tune(B, T, Hq, Hkv, D, Dv=None, only: list[str] | None = None) -> dict:
    """Greedy per-kernel tile search (see the module docstring) over the TUNE kernels (or those in `only`), at head
    dims D and Dv (default D); returns the measurements and the winners."""
    from kernels import triton_common
    Dv = Dv or D
    x, (cmp, select, slc, win, _), lse, idx = selection_inputs(B, T, Hq, Hkv, D, Dv)
    grad = torch.randn(B, T, Hq, Dv, device="cuda", dtype=torch.bfloat16)

    def band(backward):
        def run():
            o1, o2 = cmp()[0], win()
            if not backward:
                return [o1, o2]
            return list(torch.autograd.grad(o1, [x["q"], x["k_cmp"], x["v_cmp"]], grad)) + list(
                torch.autograd.grad(o2, [x["q"], x["k_win"], x["v_win"]], grad))
        return run

    def selected(backward):
        def run():
            o = slc(idx)
            return list(torch.autograd.grad(o, [x["q"], x["k_slc"], x["v_slc"]], grad)) if backward else [o]
        return run

    workload = {"band_fwd": band(False), "band_dkdv": band(True), "band_dq": band(True),
                "select": lambda: [select(lse)], "selected_fwd": selected(False), "selected_dq": selected(True),
                "selected_dkdv": selected(True)}
    report, winners = {}, {}
    hb = max(triton_common.head_block(D), triton_common.head_block(Dv))  # as the launchers pick their tiles
    size = triton_common.tile_size_class(hb)  # the GPU_TILES entry this shape uses ("d64" adds to "small")
    for kernel, alternatives in TUNE.items():
        if only and kernel not in only:
            continue
        entry = triton_common.GPU_TILES[kernel].setdefault(size, {})
        current = dict(triton_common.gpu_tiles(kernel, hb))
        run = workload[kernel]
        base_out = run()
        base_repeat = _repeat_err(run, base_out)
        best_cfg, best_ms = dict(current), timed(run)
        tried = [{"cfg": dict(current), "ms": round(best_ms, 3), "repeat": base_repeat}]
        if base_repeat > 1e-3:
            print(f"  tune {kernel}: WARNING the current tiles give other results in a second run "
                  f"({base_repeat:.2e}): a race? errors below are against its first run", flush=True)
        for alt in alternatives:
            with triton_common.tiles_set(entry, **alt):
                cfg = dict(triton_common.gpu_tiles(kernel, hb))
                if any(t["cfg"] == cfg for t in tried):  # the same tiles at this shape: timed already
                    continue
                try:
                    out = run()
                    if kernel == "select":
                        err = 1 - (out[0] == base_out[0]).all(-1).float().mean().item()
                        ok = err <= 0.01
                    else:
                        err = max(_rel(a, b) for a, b in zip(out, base_out))
                        ok = err < 1e-2
                    repeat = _repeat_err(run, out)
                    ok = ok and repeat <= 1e-3
                    ms = timed(run)
                    tried.append({"cfg": cfg, "ms": round(ms, 3), "err": err, "repeat": repeat, "ok": ok})
                    if ok and ms < 0.97 * best_ms:
                        best_cfg, best_ms = cfg, ms
                except Exception as e:  # e.g. out of shared memory: not a candidate
                    tried.append({"cfg": cfg, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            torch.cuda.empty_cache()
        entry.update(best_cfg)  # keep the winner for the next kernels and later sections
        report[kernel] = {"tried": tried, "best": best_cfg, "best_ms": round(best_ms, 3)}
        winners[kernel] = {size: best_cfg}
        print(f"  tune {kernel}: best {best_cfg} {best_ms:.3f} ms; tried {tried}", flush=True)
    return {"report": report, "winners": winners}


# ----------------------------------------------------------------------------------------------
# floors: each kernel against the card's own limits


def bench_peak() -> dict:
    """Measured dense bf16 matmul TFLOP/s (8192^3) and memory bandwidth (bench_decode's passes)."""
    from bench_decode import bench_bandwidth
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = timed(lambda: a @ b)
    return {"matmul_tflops": 2 * 8192**3 / ms / 1e9, **bench_bandwidth()}


def kernel_floors(T: int, Hq: int, Hkv: int, D: int) -> dict[str, dict[str, float]]:
    """FLOPs and unavoidable HBM bytes of each NSA kernel at the main sizes (bf16 tensors, float32 lse, int32 ids).

    FLOPs count 2 per multiply-add over the keys each query really attends (model.attention.nsa.keys_per_position):
    attention forward 4*D per (query head, key) (QK^T and PV), the selection 2*D (QK^T; its top-n is not
    counted), a backward 2.5x its forward (QK^T again, dV, dP, dQ, dK). Bytes: every input read once and every
    output written once (the backward also reads o and do, writes dq/dk/dv). For selected attention "loads" is
    what a group-centric kernel moves when each query loads its own blocks (mostly from L2)."""
    from model.attention.nsa import keys_per_position
    from model.config import AttentionConfig
    s = NSA
    cfg = AttentionConfig(name="nsa", compress_block=s["block_size"], compress_stride=s["stride"],
                          select_block=s["select_size"], num_select=s["num_select"], window=s["window"])
    keys = {b: v.double().sum().item() for b, v in keys_per_position(torch.arange(T), cfg).items()}
    q = o = T * Hq * D * 2
    kv = 2 * T * Hkv * D * 2  # K and V of one branch
    kv_cmp = 2 * num_compressed_tokens(T, s["block_size"], s["stride"]) * Hkv * D * 2
    lse, idx = T * Hq * 4, T * Hkv * s["num_select"] * 4
    branch_io = {"cmp": (q + kv_cmp, o + lse), "slc": (q + kv + idx, o + lse), "win": (q + kv, o + lse)}
    out = {"select": {"fwd_flops": 2 * D * Hq * keys["cmp"], "fwd_bytes": q + kv_cmp // 2 + lse + idx}}
    for b, (reads, writes) in branch_io.items():
        fwd = 4 * D * Hq * keys[b]
        grads = reads - (idx if b == "slc" else 0)  # dq, dk, dv: the size of what was read, ids aside
        out[b] = {"fwd_flops": fwd, "fwd_bytes": reads + writes, "fwdbwd_flops": 3.5 * fwd,
                  "fwdbwd_bytes": 2 * (reads + writes) + o + grads}
    out["slc"]["loads"] = 2 * D * 2 * Hkv * keys["slc"]
    return out


def floors_table(results: dict, peak_tflops: float, bw_gbps: float, source: str) -> str:
    """Each NSA kernel of results["main"] against its floor max(FLOPs / peak, bytes / bandwidth)."""
    lines = [f"floors ({source}: {peak_tflops:.0f} TFLOP/s dense bf16, {bw_gbps:.0f} GB/s); "
             "ms measured / floor (x = measured / floor), achieved TFLOP/s and GB/s",
             f"{'T':>6} {'kernel':>12} | {'GFLOP':>8} {'MB':>8} | {'floor':>7} {'bound':>7} | {'ms':>8} {'x':>6} | "
             f"{'TFLOP/s':>8} {'GB/s':>7}"]
    for T_str, row in results.get("main", {}).items():
        nsa = row.get("nsa", {})
        f = kernel_floors(int(T_str), HQ, HKV, D_MAIN)
        for kernel, phase in (("cmp", "fwd"), ("select", "fwd"), ("slc", "fwd"), ("win", "fwd"),
                              ("cmp", "fwdbwd"), ("slc", "fwdbwd"), ("win", "fwdbwd")):
            ms = nsa.get(f"{kernel}_{phase}")
            if not isinstance(ms, (int, float)):
                continue
            flops, nbytes = f[kernel][f"{phase}_flops"], f[kernel][f"{phase}_bytes"]
            t_c, t_m = flops / peak_tflops / 1e9, nbytes / bw_gbps / 1e6
            floor = max(t_c, t_m)
            lines.append(f"{T_str:>6} {kernel + ' ' + phase:>12} | {flops / 1e9:8.1f} {nbytes / 1e6:8.1f} | "
                         f"{floor:7.3f} {'compute' if t_c >= t_m else 'memory':>7} | {ms:8.3f} {ms / floor:6.1f} | "
                         f"{flops / ms / 1e9:8.1f} {nbytes / ms / 1e6:7.0f}")
    return "\n".join(lines)


def peak_of(results: dict, peak_tflops: float | None, bw_gbps: float | None) -> tuple[float, float, str]:
    """The floors' denominators, each: the given value, else the results' own peak section, else the defaults."""
    peak = results.get("peak") or {}
    measured = f"measured on {results.get('device', 'this card')}"
    tflops, t_src = ((peak_tflops, "given") if peak_tflops else (peak["matmul_tflops"], measured)
                     if "matmul_tflops" in peak else (H100_DENSE_BF16_TFLOPS, "H100 SXM dense bf16 spec"))
    bw, b_src = ((bw_gbps, "given") if bw_gbps else (peak["read_GBps"], measured) if "read_GBps" in peak
                 else (H100_READ_GBPS, "H100 read bandwidth measured earlier"))
    return tflops, bw, t_src if t_src == b_src else f"{t_src} / {b_src}"


# H100 SXM: dense bf16 spec; read-only bandwidth measured by bench_decode.py on the team's H100 (docs/benchmarks.md)
H100_DENSE_BF16_TFLOPS, H100_READ_GBPS = 989.0, 2795.0


# ----------------------------------------------------------------------------------------------


def save(results: dict, path: str | None) -> None:
    if path:
        write_text_atomic(path, json.dumps(results, indent=1))


def error_text(e: Exception) -> str:
    """One line naming an exception, as results record it."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def attempt(container: dict, key: str, fn, checkpoint) -> None:
    """container[key] = fn(), or the error it raised; then checkpoint() (saves the whole results)."""
    t0 = time.time()
    try:
        container[key] = fn()
    except Exception as e:  # a backend that does not support a shape is a result, not a crash
        container[key] = {"error": error_text(e)}
    torch.cuda.empty_cache()
    print(f"  {key}: {container[key]}  ({time.time() - t0:.1f}s)", flush=True)
    checkpoint()


def fmt(x):
    return f"{x:8.2f}" if isinstance(x, (int, float)) else f"{'-':>8}"


def table(results: dict) -> str:
    lines = []
    for section in ("main", "paper"):
        rows = results.get(section, {})
        if not rows:
            continue
        lines.append(f"\n[{section}] ms (fwd / fwd+bwd); speed-up = cuDNN time / NSA total time")
        lines.append(f"{'T':>6} | {'flash':>8} {'cudnn':>8} | {'cmp':>8} {'select':>8} {'slc':>8} {'win':>8} "
                     f"{'NSA':>8} | {'x fwd':>6} | {'flash':>8} {'cudnn':>8} | {'cmp':>8} {'slc':>8} {'win':>8} "
                     f"{'NSA':>8} | {'x f+b':>6} | {'mem cuDNN':>9} {'mem NSA':>8}")
        for T, r in rows.items():
            fl, cu, ns = r.get("flash", {}), r.get("cudnn", {}), r.get("nsa", {})
            x_f = cu.get("fwd", math.nan) / ns.get("total_fwd", math.nan) if "fwd" in cu and ns else math.nan
            x_b = cu.get("fwdbwd", math.nan) / ns.get("total_fwdbwd", math.nan) if "fwdbwd" in cu and ns else math.nan
            lines.append(
                f"{T:>6} | {fmt(fl.get('fwd'))} {fmt(cu.get('fwd'))} | {fmt(ns.get('cmp_fwd'))} "
                f"{fmt(ns.get('select_fwd'))} {fmt(ns.get('slc_fwd'))} {fmt(ns.get('win_fwd'))} "
                f"{fmt(ns.get('total_fwd'))} | {x_f:6.2f} | {fmt(fl.get('fwdbwd'))} {fmt(cu.get('fwdbwd'))} | "
                f"{fmt(ns.get('cmp_fwdbwd'))} {fmt(ns.get('slc_fwdbwd'))} {fmt(ns.get('win_fwdbwd'))} "
                f"{fmt(ns.get('total_fwdbwd'))} | {x_b:6.2f} | {fmt(cu.get('peak_fwdbwd_mib'))}  "
                f"{fmt(ns.get('peak_fwdbwd_mib'))}")
    if results.get("gsweep"):
        lines.append("\n[gsweep] T=32768, Hq=64, Hkv=64/G: NSA ms")
        lines.append(f"{'G':>3} | {'cmp':>8} {'select':>8} {'slc':>8} {'win':>8} {'total':>8} | "
                     f"{'slc f+b':>8} {'total f+b':>9}")
        for G, ns in results["gsweep"].items():
            lines.append(f"{G:>3} | {fmt(ns.get('cmp_fwd'))} {fmt(ns.get('select_fwd'))} {fmt(ns.get('slc_fwd'))} "
                         f"{fmt(ns.get('win_fwd'))} {fmt(ns.get('total_fwd'))} | {fmt(ns.get('slc_fwdbwd'))} "
                         f"{fmt(ns.get('total_fwdbwd'))}")
    if results.get("compressed"):
        lines.append("\n[compressed] compressed attention alone, ms fwd / fwd+bwd; x = Triton's time / this one's; "
                     "err = largest relative error against Triton (o, lse, dq, dk, dv)")
        for key, r in results["compressed"].items():
            tr = r.get("triton", {})
            for name, v in r.items():
                if "fwd" not in v:
                    lines.append(f"{key:>12} {name:>16}: {v}")
                    continue
                x = (f"x {tr['fwd'] / v['fwd']:5.2f} {tr['fwdbwd'] / v['fwdbwd']:5.2f}" if "fwd" in tr else "")
                err = f"err {v['err']:.1e}" if "err" in v else ""
                lines.append(f"{key:>12} {name:>16}: {fmt(v['fwd'])} {fmt(v['fwdbwd'])} {x} {err}")
    if results.get("tune"):
        heads = results["tune"].get("heads", (HQ, HKV, D_MAIN))
        lines.append(f"\n[tune] T={results['tune'].get('T', 32768)}, Hq, Hkv, D = {tuple(heads)}: first config tried "
                     "(the default) -> best, ms of its workload")
        for kernel, r in results["tune"]["report"].items():
            lines.append(f"{kernel:>14}: {r['tried'][0]['ms']:8.3f} -> {r['best_ms']:8.3f}  {r['best']}")
    if results.get("host"):
        lines.append("\n[host] CPU us per call (T=1024, Hq=16, Hkv=1, D=64): "
                     + ", ".join(f"{k} {v}" for k, v in results["host"].items() if k != "error"))
    for T, prof in results.get("profile", {}).items():
        lines.append(f"\n[profile] NSA forward+backward at T={T}: CUDA ms per kernel (calls)")
        for name, (calls, ms) in (prof.items() if "error" not in prof else []):
            lines.append(f"{ms:9.3f}  ({calls})  {name}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--sections", nargs="+", default=["peak", "main", "gsweep", "paper", "profile"],
                   choices=["peak", "tune", "main", "gsweep", "paper", "profile", "host", "share", "compressed"])
    p.add_argument("--compressed-backend", choices=cudnn_compressed.BACKENDS,
                   help="compressed attention's kernel for every section (default: kernels.ops.COMPRESSED_BACKEND)")
    p.add_argument("--tiles-out", help="write the tune section's winning tile sizes here (JSON)")
    p.add_argument("--tune-kernels", nargs="+", choices=sorted(TUNE), help="tune only these kernels")
    p.add_argument("--tune-shape", choices=sorted(HEAD_SHAPES), default="main",
                   help="heads of the tune section: main (Hq=64, Hkv=4, D=128), small (Hq=16, Hkv=1, D=64) or "
                        "paper (Hq=64, Hkv=4, Dk=192, Dv=128)")
    p.add_argument("--tune-T", type=int, default=32768, help="sequence length of the tune section")
    p.add_argument("--paper-T", type=int, nargs="+", default=[32768, 65536])
    p.add_argument("--out", help="write results as JSON here")
    p.add_argument("--baselines", nargs="*", choices=["flash", "cudnn"], default=["flash", "cudnn"],
                   help="SDPA backends timed beside NSA in main/paper (none: NSA only, for A/B runs of tiles)")
    p.add_argument("--floors-from", help="print the floors table of this results JSON and exit (no GPU needed)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 TFLOP/s for the floors (default: measured/spec)")
    p.add_argument("--bw-gbps", type=float, help="memory bandwidth GB/s for the floors (default: measured)")
    args = p.parse_args()
    if args.floors_from:
        results = json.loads(Path(args.floors_from).read_text())
        print(floors_table(results, *peak_of(results, args.peak_tflops, args.bw_gbps)))
        return
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU")
    import triton

    from kernels import ops
    ops.COMPRESSED_BACKEND = args.compressed_backend or ops.COMPRESSED_BACKEND
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "nsa_sizes": NSA,
               "compressed_backend": ops.COMPRESSED_BACKEND,
               "main": {}, "gsweep": {}, "paper": {}, "profile": {}, "host": {}, "share": {}, "compressed": {}}
    B, Hq = 1, HQ

    def checkpoint():
        save(results, args.out)
    if "peak" in args.sections:
        print("peak", flush=True)
        attempt(results, "peak", bench_peak, checkpoint)
    if "tune" in args.sections:
        heads = HEAD_SHAPES[args.tune_shape]
        print(f"tune T={args.tune_T}, Hq, Hkv, Dk, Dv = {heads}", flush=True)
        results["tune"] = tune(B, args.tune_T, *heads, only=args.tune_kernels)
        results["tune"]["heads"], results["tune"]["T"] = heads, args.tune_T
        checkpoint()
        save(results["tune"]["winners"], args.tiles_out)

    def nsa_vs_sdpa(section: str, T: int, Dk: int) -> None:
        """results[section][T]: NSA (Hq heads in 4 KV groups) and SDPA flash / cuDNN at head dims Dk / Dv=128."""
        print(f"{section} T={T}", flush=True)
        row = results[section].setdefault(str(T), {})
        attempt(row, "nsa", lambda: bench_nsa(B, T, Hq, HKV, Dk, 128), checkpoint)
        for backend in args.baselines:
            attempt(row, backend, lambda b=backend: bench_sdpa(B, T, Hq, Dk, 128, b), checkpoint)

    if "main" in args.sections:
        for T in args.T:
            nsa_vs_sdpa("main", T, D_MAIN)
    if "gsweep" in args.sections:
        for G in (1, 2, 4, 8, 16):
            print(f"gsweep G={G}", flush=True)
            attempt(results["gsweep"], str(G), lambda G=G: bench_nsa(B, 32768, Hq, Hq // G, 128, 128), checkpoint)
    if "paper" in args.sections:
        for T in args.paper_T:
            nsa_vs_sdpa("paper", T, 192)
    if "profile" in args.sections:
        print("profile T=32768", flush=True)
        attempt(results["profile"], "32768", lambda: profile_nsa(B, 32768, Hq, HKV, D_MAIN, D_MAIN), checkpoint)
    if "host" in args.sections:
        print("host", flush=True)
        attempt(results, "host", bench_host, checkpoint)
    if "share" in args.sections:
        # G < 16: the one-position kernel pads G rows to 16 for the MMA; a shared tile fills them with
        # positions instead (P >= 16 / G), so there it does at most the same MMA work and loads fewer blocks
        shapes = {"main-8k": (8192, Hq, HKV, D_MAIN), "main-32k": (32768, Hq, HKV, D_MAIN),
                  "small-8k": (8192, *SMALL_HEADS), "G4-32k": (32768, Hq, Hq // 4, 128)}
        shapes.update({f"G{g}-8k": (8192, Hq, Hq // g, 128) for g in (1, 2, 4, 8)})
        for name, (T, hq, hkv, d) in shapes.items():
            print(f"share {name}", flush=True)
            attempt(results["share"], name, lambda a=(T, hq, hkv, d): bench_share(B, *a[:3], a[3]), checkpoint)
    if "compressed" in args.sections:  # bench_compressed_backends restores the backend it switches
        for name, (hq, hkv, dk, dv) in HEAD_SHAPES.items():
            for T in args.T:
                print(f"compressed {name} T={T}", flush=True)
                attempt(results["compressed"], f"{name}-{T}",
                        lambda a=(T, hq, hkv, dk, dv): bench_compressed_backends(B, *a), checkpoint)
    print(f"\n{results['device']}, torch {results['torch']}, triton {results['triton']}")
    print(table(results))
    if results["main"]:
        print(floors_table(results, *peak_of(results, args.peak_tflops, args.bw_gbps)))


if __name__ == "__main__":
    main()
