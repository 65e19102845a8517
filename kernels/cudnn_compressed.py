"""Compressed attention through cuDNN's fused attention kernel (PyTorch SDPA's cuDNN backend).

Why this works: compressed token i is visible to query t iff i*d + l - 1 <= t. Cut the queries from
t = l - 1 on into chunks of d consecutive rows: every row t = l - 1 + c*d + r (0 <= r < d) of chunk c sees
exactly the tokens 0..c. So chunk c against token c is plain causal attention with as many query chunks as
compressed tokens, and the d rows of a chunk are d "heads" that share the chunk's keys. In SDPA's
[N, H, L, D] layout that is a strided view of q, no copy:

    N = Hq (query head, stride Dk), H = d (row in the chunk, stride Hq*Dk), L = chunk (stride d*Hq*Dk)

with the KV head of query head h (h // G) repeated G times as N's keys ([Hq, 1, Tc, D], a small copy: Tc = T/d)
and cuDNN's GQA (H = d query heads on 1 KV head). The rows before l - 1 see nothing (o = 0, lse = -inf) and
the last (T - l + 1) % d rows, a partial chunk that sees every token, go through kernels.reference.attend.

Why bother: on an H100 cuDNN runs full causal attention at ~600 TFLOP/s forward, the Triton banded kernel runs
compressed attention at ~413 (64k, docs/benchmarks.md); whether cuDNN keeps its rate on this layout is what
`scripts/bench_attention.py --sections compressed` measures. Its kernels exist only for float16/bfloat16 CUDA
tensors, and the lse they return carries no gradient (NSA only feeds it to the non-differentiable block
selection). kernels/ops.py takes this path only where it applies and COMPRESSED_BACKEND asks for it ("auto",
the default: only where pays_off finds it the faster one; "cudnn": always); everything else keeps the Triton
kernel. Autograd comes from PyTorch's own derivative of the cuDNN op, so torch.compile traces the whole function.
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels.reference import attend, resolve_scale

BACKENDS = ("auto", "triton", "cudnn")  # NSA_COMPRESSED_BACKEND's choices (kernels/ops.py COMPRESSED_BACKEND)
DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256  # cuDNN's fused attention on Hopper takes head dims up to 256 (multiples of 8)
# How the d query rows of a chunk share their KV head in the cuDNN call: "shared" (K/V with one head: cuDNN's GQA),
# "broadcast" (K/V expanded to the d rows with stride 0) or "copied" (expanded and materialised: d times the
# compressed K/V's memory). All three are the same math; which cuDNN runs fastest (or at all) is measured by
# scripts/bench_attention.py --sections compressed.
KV_LAYOUTS = ("shared", "broadcast", "copied")
KV_LAYOUT = "shared"


def supported(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor) -> bool:
    """True when cuDNN's attention can run these inputs (CUDA, half precision, head dims it supports)."""
    dims_ok = all(x.shape[-1] % 8 == 0 and x.shape[-1] <= MAX_HEAD_DIM and x.stride(-1) == 1 for x in (q, v_cmp))
    return (q.is_cuda and q.dtype in DTYPES and k_cmp.dtype == q.dtype and v_cmp.dtype == q.dtype and dims_ok
            and hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention"))


# NSA_COMPRESSED_BACKEND=auto takes cuDNN where it beat the Triton kernel: per sequence, the work
# Hq * T * (T / d) * (Dk + Dv) of at least AUTO_MIN_WORK. Measured on an H200 (docs/benchmarks.md, fifteenth
# session; `bench_attention.py --sections compressed`): forward and forward+backward both lose at or below
# 2.75e11 (Hq 64 D 128 at 16k: 0.83x f+b; Hq 16 D 64 at 32k: 0.72x; Dk 192 Dv 128 at 8k: 0.66x) and both win
# from 3.4e11 up (1.19x at the paper's heads at 16k; 1.27x main heads, 1.24x small heads at 64k). Only on the
# torch it was measured with: older versions' cuDNN bindings are untested here, so auto keeps them on Triton.
AUTO_MIN_WORK = 3e11
AUTO_MIN_TORCH = (2, 11)


def pays_off(q: torch.Tensor, v_cmp: torch.Tensor, stride: int) -> bool:
    """Whether auto should take cuDNN for these inputs (q [B, T, Hq, Dk]); supported() is checked separately."""
    _, T, Hq, Dk = q.shape
    torch_version = tuple(int(x) for x in torch.__version__.split(".")[:2])
    return torch_version >= AUTO_MIN_TORCH and Hq * T * (T // stride) * (Dk + v_cmp.shape[-1]) >= AUTO_MIN_WORK


def _cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention: q [N, H, L, Dk], k [N, 1 or H, L, Dk], v [N, 1 or H, L, Dv] -> o [N, H, L, Dv], lse [N, H, L].
    """
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False, scale=scale)
    return out[0], out[1].reshape(q.shape[:3])  # lse is [N, H, L] or [N, H, L, 1] depending on the version


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, block_size: int,
                         stride: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B,T,Hq,Dk], k_cmp [B,Tc,Hkv,Dk], v_cmp [B,Tc,Hkv,Dv] -> o [B,T,Hq,Dv], lse [B,T,Hq] float32 (no grad).

    Same contract as kernels.compressed_attention (q_start = 0); inputs validated by the caller.
    """
    B, T, Hq, Dk = q.shape
    Hkv, Dv = k_cmp.shape[2], v_cmp.shape[3]
    G, first = Hq // Hkv, block_size - 1
    scale = resolve_scale(scale, Dk)
    chunks = max(0, T - first) // stride  # full chunks of `stride` rows
    if not chunks:  # fewer than block_size + stride - 1 rows: nothing for cuDNN to do
        o, lse = reference.compressed_attention(q, k_cmp, v_cmp, block_size=block_size, stride=stride, scale=scale)
        return o, lse.detach()
    t_tail = first + chunks * stride  # the rows from here on (fewer than `stride`) see all Tc tokens
    outs, lses = [], []
    for b in range(B):  # one cuDNN call per sequence: folding B into N would need a copy of q
        qc = q[b, first:t_tail].view(chunks, stride, Hq, Dk).permute(2, 1, 0, 3)  # [Hq, d, C, Dk]
        kc, vc = (x[b, :chunks].permute(1, 0, 2)[:, None].expand(Hkv, G, chunks, x.shape[-1])
                  .reshape(Hq, 1, chunks, x.shape[-1]) for x in (k_cmp, v_cmp))  # [Hq, 1, C, D]
        if KV_LAYOUT != "shared":
            kc, vc = (x.expand(Hq, stride, chunks, x.shape[-1]) for x in (kc, vc))
            if KV_LAYOUT == "copied":
                kc, vc = kc.contiguous(), vc.contiguous()
        o, lse = _cudnn(qc, kc, vc, scale)
        outs.append(o.permute(2, 1, 0, 3).reshape(chunks * stride, Hq, Dv))
        lses.append(lse.permute(2, 1, 0).reshape(chunks * stride, Hq))
    stack = (lambda xs: xs[0][None]) if B == 1 else torch.stack  # B = 1: a view, not another copy of o
    parts_o = [q.new_zeros(B, first, Hq, Dv), stack(outs)]
    parts_lse = [torch.full((B, first, Hq), float("-inf"), device=q.device), stack(lses).float()]
    if t_tail < T:
        visible = torch.ones(1, 1, dtype=torch.bool, device=q.device)
        o, lse = attend(q[:, t_tail:], k_cmp, v_cmp, visible, scale)
        parts_o.append(o)
        parts_lse.append(lse)
    return torch.cat(parts_o, dim=1), torch.cat(parts_lse, dim=1).detach()
