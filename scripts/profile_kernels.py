"""Run one NSA workload once between cudaProfilerStart/Stop, for Nsight Compute (ncu) to read its kernels.

    ncu --profile-from-start off --clock-control none --set full python scripts/profile_kernels.py decode --B 1
    bash scripts/gpu_ncu.sh            # the workloads below under ncu on the lent GPU, reports as text

Workloads (bf16, main shape Hq=64, Hkv=4, D=128 unless --shape small; NSA with the paper's sizes):
- decode: one NSA decoding step at position T - 1 as the model's graphed decoding runs it (the three *_at
  launches of kernels/triton_decode.py), then full attention's step on the same cache (SDPA, cuDNN), the
  baseline; inputs as scripts/bench_decode.py makes them.
- forward: each NSA branch's forward kernels at T (compressed attention, block selection, selected attention,
  window attention), inputs as scripts/bench_attention.py makes them.
- backward: the forward+backward of the three attention branches at T.
Every workload runs twice before the profiled call (Triton compiles, caches allocate), so the profiled launches
are the steady state. Kernels launched between start and stop are all profiled; ncu's --kernel-name filters them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attention  # noqa: E402
import bench_decode  # noqa: E402


def decode_workload(B: int, T: int, shape: str):
    x = bench_decode.make_cache(B, T, **bench_decode.SHAPES[shape])
    step = bench_decode.nsa_step_at(x, T)
    q, k, v = x["q"], x["k_slc"], x["v_slc"]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def full():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True)

    return lambda: (step(), full())


def branch_workload(B: int, T: int, shape: str, backward: bool):
    s = bench_decode.SHAPES[shape]
    x = bench_attention.make_inputs(B, T, s["Hq"], s["Hkv"], s["D"], s["D"], grad=backward)
    work = bench_attention.nsa_workloads(x)
    names = ("cmp_fwdbwd", "slc_fwdbwd", "win_fwdbwd") if backward else ("cmp_fwd", "select_fwd", "slc_fwd", "win_fwd")
    return lambda: [work[n]() for n in names]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=["decode", "forward", "backward"])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--T", type=int, default=65536)
    p.add_argument("--shape", choices=sorted(bench_decode.SHAPES), default="main")
    args = p.parse_args()
    if args.workload == "decode":
        run = decode_workload(args.B, args.T, args.shape)
    else:
        run = branch_workload(args.B, args.T, args.shape, backward=args.workload == "backward")
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"profiled: {args.workload} B={args.B} T={args.T} shape={args.shape}")


if __name__ == "__main__":
    main()
