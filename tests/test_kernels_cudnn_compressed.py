"""kernels/cudnn_compressed.py: compressed attention as cuDNN causal attention over chunks of queries.

On CPU the cuDNN call is replaced by the same causal attention written out in float64, so what is checked is
everything around it: the strided view that folds `stride` query rows into heads, the repeated KV heads, the rows
before the first compressed token, the partial last chunk, B > 1, and the gradients through all of it, against
kernels/reference.py on fresh random inputs. On the GPU (marked `gpu`) the real cuDNN kernel runs in bf16 against the
reference in float32, and the dispatch through kernels.compressed_attention is checked.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import cudnn_compressed
from kernels import reference as ref

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))


def causal_attention(q, k, v, scale):
    """What cuDNN computes: q [N, H, L, Dk], k [N, 1, L, Dk], v [N, 1, L, Dv], causal over L, float64 math."""
    L = q.shape[2]
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def grads(out, inputs, weight):
    return torch.autograd.grad((out * weight).sum(), inputs, allow_unused=True, materialize_grads=True)


CASES = [  # B, T, Hkv, G, Dk, Dv, block_size, stride
    pytest.param((1, 53, 2, 2, 8, 8, 8, 4), id="tail-G2"),
    pytest.param((2, 39, 1, 16, 8, 4, 8, 4), id="no-tail-B2-G16-Dv<Dk"),  # 39 - 7 = 32 rows: 8 whole chunks
    pytest.param((1, 45, 3, 1, 4, 12, 4, 4), id="l=d-G1-Dv>Dk"),
    pytest.param((1, 10, 1, 2, 8, 8, 8, 4), id="one-chunk"),
    pytest.param((1, 9, 1, 2, 8, 8, 8, 4), id="tail-only"),
    pytest.param((2, 6, 1, 2, 8, 8, 8, 4), id="shorter-than-a-block"),
]


@pytest.mark.parametrize("layout", cudnn_compressed.KV_LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_chunked_causal_layout_matches_reference(gen, case, layout, monkeypatch):
    monkeypatch.setattr(cudnn_compressed, "KV_LAYOUT", layout)
    B, T, Hkv, G, Dk, Dv, bs, d = case
    Tc = ref.num_compressed_tokens(T, bs, d)
    q, kc, vc = (torch.randn(*s, generator=gen, dtype=F64).requires_grad_()
                 for s in ((B, T, Hkv * G, Dk), (B, Tc, Hkv, Dk), (B, Tc, Hkv, Dv)))
    seen = []

    def fake_cudnn(q4, k4, v4, scale):  # checks what cuDNN would be handed, then does its math
        seen.append(q4)
        kv_heads = 1 if layout == "shared" else d
        assert q4.shape == (Hkv * G, d, (T - bs + 1) // d, Dk) and k4.shape == (Hkv * G, kv_heads, q4.shape[2], Dk)
        assert (k4.stride(1) == 0) == (layout == "broadcast")
        assert q4.untyped_storage().data_ptr() == q.untyped_storage().data_ptr(), "q was copied, not viewed"
        return causal_attention(q4, k4, v4, scale)

    monkeypatch.setattr(cudnn_compressed, "_cudnn", fake_cudnn)
    o, lse = cudnn_compressed.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    o_r, lse_r = ref.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    assert len(seen) == (B if T >= bs - 1 + d else 0)  # one call per sequence, none without a whole chunk
    assert o.shape == o_r.shape and lse.shape == lse_r.shape and lse.dtype == torch.float32
    assert not lse.requires_grad
    torch.testing.assert_close(o, o_r, atol=1e-10, rtol=1e-10)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_r))
    fin = torch.isfinite(lse_r)
    torch.testing.assert_close(lse[fin], lse_r[fin], atol=1e-6, rtol=1e-6)
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    for g, g_r in zip(grads(o, (q, kc, vc), w), grads(o_r, (q, kc, vc), w), strict=True):
        torch.testing.assert_close(g, g_r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("B", [1, 2])
def test_real_cudnn_op_signature_autograd_and_fullgraph_trace_on_meta_tensors(B):
    """No GPU needed: on meta tensors the real cuDNN op runs its shape functions, so this checks the call's
    arguments, PyTorch's derivative of it (the backward op and its arguments) and that torch.compile traces the
    whole path as one graph (fullgraph, aot_eager: no kernels are generated)."""
    Hq, Hkv, D, bs, d = 8, 2, 64, 32, 16
    T = 100
    meta = dict(device="meta", dtype=torch.bfloat16, requires_grad=True)
    q = torch.empty(B, T, Hq, D, **meta)
    kc, vc = (torch.empty(B, ref.num_compressed_tokens(T, bs, d), Hkv, D, **meta) for _ in range(2))

    def cmp(q, kc, vc):
        return cudnn_compressed.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    for fn in (cmp, torch.compile(cmp, fullgraph=True, backend="aot_eager")):
        o, lse = fn(q, kc, vc)
        assert o.shape == (B, T, Hq, D) and lse.shape == (B, T, Hq) and lse.dtype == torch.float32
        dq, dk, dv = torch.autograd.grad(o.float().sum(), (q, kc, vc))
        assert dq.shape == q.shape and dk.shape == kc.shape and dv.shape == vc.shape


def test_backend_choice_is_validated():
    env = {**os.environ, "NSA_COMPRESSED_BACKEND": "cudnnn", "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", "import kernels.ops"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "NSA_COMPRESSED_BACKEND='cudnnn': use one of auto, triton, cudnn" in r.stderr


@pytest.mark.parametrize("heads,T,expect", [  # (Hq, Dk, Dv): each pair straddles its measured crossover
    ((64, 128, 128), 16384, False), ((64, 128, 128), 32768, True),  # the benchmark's main heads
    ((16, 64, 64), 32768, False), ((16, 64, 64), 65536, True),  # the small_gqa16 model's
    ((64, 192, 128), 8192, False), ((64, 192, 128), 16384, True),  # the paper's
])
def test_auto_takes_cudnn_only_where_it_measured_faster(heads, T, expect, monkeypatch):
    Hq, Dk, Dv = heads
    q, v = (torch.empty(1, T, Hq, D, device="meta") for D in (Dk, Dv))
    assert cudnn_compressed.pays_off(q, v, 16) is expect
    monkeypatch.setattr(torch, "__version__", "2.10.0+cu128")  # auto trusts only the measured torch
    assert not cudnn_compressed.pays_off(q, v, 16)


@pytest.mark.parametrize("backend,big,want", [
    ("auto", True, "cudnn"), ("auto", False, "triton"), ("cudnn", False, "cudnn"), ("triton", True, "triton")])
def test_dispatch_follows_the_backend_setting(backend, big, want, monkeypatch):
    """kernels.compressed_attention's choice, with the cuDNN path and pays_off stubbed (CPU: nothing runs cuDNN)."""
    from kernels import ops
    monkeypatch.setattr(ops, "COMPRESSED_BACKEND", backend)
    monkeypatch.setattr(cudnn_compressed, "supported", lambda *a: True)
    monkeypatch.setattr(cudnn_compressed, "pays_off", lambda *a: big)
    monkeypatch.setattr(cudnn_compressed, "compressed_attention", lambda *a, **k: "cudnn")
    q, kc = torch.randn(1, 40, 2, 8), torch.randn(1, 3, 1, 8)
    got = ops.compressed_attention(q, kc, kc, block_size=8, stride=4)
    assert ("cudnn" if got == "cudnn" else "triton") == want


def test_cpu_and_float32_inputs_are_not_supported():
    q, k = torch.randn(1, 40, 2, 8), torch.randn(1, 3, 1, 8)
    assert not cudnn_compressed.supported(q, k, k)
    assert not cudnn_compressed.supported(q.bfloat16(), k.bfloat16(), k.bfloat16())  # CPU


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [  # B, T, Hq, Hkv, Dk, Dv
    pytest.param((1, 4096 + 7, 64, 4, 128, 128), id="T4k-Hq64-Hkv4-D128"),
    pytest.param((2, 2048, 16, 1, 64, 64), id="B2-T2k-Hq16-Hkv1-D64"),
    pytest.param((1, 3001, 32, 2, 192, 128), id="T3001-Dk192-Dv128"),
])
def test_cudnn_compressed_attention_bf16(shape, cuda_gen, monkeypatch):
    from kernels import ops
    from tests.gpu_utils import rand, rel_err
    monkeypatch.setattr(ops, "COMPRESSED_BACKEND", "cudnn")
    B, T, Hq, Hkv, Dk, Dv = shape
    bs, d = 32, 16
    Tc = ref.num_compressed_tokens(T, bs, d)
    xs = rand(cuda_gen, B, T, Hq, Dk), rand(cuda_gen, B, Tc, Hkv, Dk), rand(cuda_gen, B, Tc, Hkv, Dv)
    q, kc, vc = (x.clone().requires_grad_() for x in xs)
    q32, kc32, vc32 = (x.float().requires_grad_() for x in xs)
    calls = []
    real = cudnn_compressed._cudnn
    monkeypatch.setattr(cudnn_compressed, "_cudnn", lambda *a: calls.append(1) or real(*a))
    o, lse = kernels.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    assert len(calls) == B, "kernels.compressed_attention did not take the cuDNN path"
    o_r, lse_r = ref.compressed_attention(q32, kc32, vc32, block_size=bs, stride=d)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_r))
    fin = torch.isfinite(lse_r)
    w = torch.randn(o.shape, generator=cuda_gen, device="cuda")
    got = [o, lse[fin], *torch.autograd.grad((o.float() * w).sum(), (q, kc, vc))]
    want = [o_r, lse_r[fin], *torch.autograd.grad((o_r * w).sum(), (q32, kc32, vc32))]
    for name, a, e in zip(("o", "lse", "dq", "dk_cmp", "dv_cmp"), got, want, strict=True):
        err = rel_err(a, e)
        print(f"  {name}: relative error {err:.2e}")
        assert err < 6e-3, f"{name}: relative error {err:.2e} (seed {cuda_gen.initial_seed()})"


@pytest.mark.gpu
def test_cudnn_compressed_attention_compiles_fullgraph(cuda_gen, monkeypatch):
    from kernels import ops
    from tests.gpu_utils import rand, rel_err
    monkeypatch.setattr(ops, "COMPRESSED_BACKEND", "cudnn")
    B, T, Hq, Hkv, D, bs, d = 1, 2048 + 5, 32, 2, 128, 32, 16
    Tc = ref.num_compressed_tokens(T, bs, d)
    xs = rand(cuda_gen, B, T, Hq, D), rand(cuda_gen, B, Tc, Hkv, D), rand(cuda_gen, B, Tc, Hkv, D)

    def run(fn):
        q, kc, vc = (x.clone().requires_grad_() for x in xs)
        o, lse = fn(q, kc, vc)
        return [o, lse, *torch.autograd.grad(o.float().square().sum(), (q, kc, vc))]

    def cmp(q, kc, vc):
        return kernels.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    eager, compiled = run(cmp), run(torch.compile(cmp, fullgraph=True))
    for name, a, e in zip(("o", "lse", "dq", "dk_cmp", "dv_cmp"), compiled, eager, strict=True):
        e, a = (x[torch.isfinite(x)] for x in (e, a)) if name == "lse" else (e, a)
        assert rel_err(a, e) < 1e-3, f"{name}: compiled differs from eager by {rel_err(a, e):.2e}"
