"""Tests of NSA's four kernel ops: the reference against brute force, the chunked/dispatched path
against the reference, edge cases, block-selection properties, and size validation.

The brute-force versions below are deliberately written differently from kernels/reference.py:
explicit Python loops over (batch, query, head) that list the visible keys straight from the
definitions in /work/shared/NSA.md, then run one small softmax per query, all in float64.
Every test draws fresh inputs from a generator seeded by the test's own id.
"""

from __future__ import annotations

import math
import re
import zlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels
from kernels import chunked
from kernels import reference as ref

F64 = torch.float64


@pytest.fixture
def gen(request) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = F64, grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).requires_grad_(grad)


def make_qkv(gen, B, T, Hkv, G, Dk, Dv, S=None):
    S = T if S is None else S
    return randn(gen, B, T, Hkv * G, Dk), randn(gen, B, S, Hkv, Dk), randn(gen, B, S, Hkv, Dv)


def grads(out: torch.Tensor, inputs, weight: torch.Tensor):
    """Gradient of the random projection sum(out * weight) w.r.t. inputs (zeros for unused ones)."""
    return torch.autograd.grad((out * weight).sum(), inputs, retain_graph=True, allow_unused=True,
                               materialize_grads=True)


def finite_part(lse: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def assert_all_close(actual, expected, atol=1e-10, rtol=1e-10):
    for a, e in zip(actual, expected, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.to(e.dtype), e, atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------------------------
# brute force, straight from the definitions


def brute_attention(q, k, v, visible_keys, scale=None):
    """One softmax per (b, t, h) over the key positions visible_keys(b, t, kv_head) -> (o, lse)."""
    B, T, Hq, Dk = q.shape
    G = Hq // k.shape[2]
    scale = Dk ** -0.5 if scale is None else scale
    outs, lses = [], []
    for b in range(B):
        for t in range(T):
            for h in range(Hq):
                keys = visible_keys(b, t, h // G)
                if keys:
                    logits = (k[b, keys, h // G] @ q[b, t, h]) * scale
                    outs.append(torch.softmax(logits, dim=0) @ v[b, keys, h // G])
                    lses.append(torch.logsumexp(logits, dim=0))
                else:  # nothing visible: a zero row that is still part of the graph
                    outs.append(v[b, :0, h // G].sum(dim=0))
                    lses.append(torch.tensor(-math.inf, dtype=q.dtype))
    return torch.stack(outs).reshape(B, T, Hq, -1), torch.stack(lses).reshape(B, T, Hq)


def brute_compressed(q, k_cmp, v_cmp, bs, d, scale=None):
    def visible(b, t, g):
        return [i for i in range(k_cmp.shape[1]) if i * d + bs - 1 <= t]  # whole block [i*d, i*d+bs) seen
    return brute_attention(q, k_cmp, v_cmp, visible, scale)


def brute_selected(q, k, v, idx, ss, scale=None):
    def visible(b, t, g):
        blocks = {int(j) for j in idx[b, t, g] if j >= 0}
        return [s for s in range(t + 1) if s // ss in blocks]
    return brute_attention(q, k, v, visible, scale)[0]


def brute_window(q, k, v, w, scale=None):
    return brute_attention(q, k, v, lambda b, t, g: list(range(max(0, t - w + 1), t + 1)), scale)[0]


def brute_selection(q, k_cmp, bs, d, ss, n, num_init, num_local, scale=None):
    """Expected chosen block sets [b][t][g] -> set, from importance computed per query with loops."""
    B, T, Hq, Dk = q.shape
    Tc, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    G = Hq // Hkv
    scale = Dk ** -0.5 if scale is None else scale
    n_blocks = -(-T // ss)
    # overlap of token sets, in units of the stride
    weight = {(i, j): len(set(range(i * d, i * d + bs)) & set(range(j * ss, (j + 1) * ss))) / d
              for i in range(Tc) for j in range(n_blocks)}
    chosen = []
    with torch.no_grad():
        for b in range(B):
            per_t = []
            for t in range(T):
                per_g = []
                for g in range(Hkv):
                    seen = [i for i in range(Tc) if i * d + bs - 1 <= t]
                    importance = torch.zeros(Tc, dtype=F64)
                    for h in range(g * G, (g + 1) * G):
                        if seen:
                            importance[seen] += torch.softmax(k_cmp[b, seen, g] @ q[b, t, h] * scale, dim=0)
                    visible = [j for j in range(n_blocks) if j * ss <= t]
                    score = {j: sum(float(importance[i]) * weight[i, j] for i in range(Tc)) for j in visible}
                    forced = {j for j in visible if j < num_init or t // ss - num_local < j}
                    rest = sorted((j for j in visible if j not in forced), key=lambda j: (-score[j], j))
                    per_g.append(forced | set(rest[: n - len(forced)]))
                per_t.append(per_g)
            chosen.append(per_t)
    return chosen


# ----------------------------------------------------------------------------------------------
# shapes exercised: T not a multiple of any block size, G = 1 / 2 / 16, Dv != Dk

SHAPES = [
    pytest.param(dict(B=2, T=53, Hkv=2, G=2, Dk=8, Dv=8), id="G2"),
    pytest.param(dict(B=1, T=37, Hkv=1, G=16, Dk=8, Dv=4), id="G16-Dv<Dk"),
    pytest.param(dict(B=2, T=45, Hkv=3, G=1, Dk=4, Dv=12), id="G1-Dv>Dk"),
]
SIZES = [  # (block_size, stride, select_size)
    pytest.param((8, 4, 16), id="l8d4L16"),
    pytest.param((4, 4, 8), id="l4d4L8"),
]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("shape", SHAPES)
def test_compressed_reference_matches_brute_force(gen, shape, sizes):
    B, T, Hkv, G, Dk, Dv = (shape[k] for k in ("B", "T", "Hkv", "G", "Dk", "Dv"))
    bs, d, _ = sizes
    q, kc, vc = make_qkv(gen, B, T, Hkv, G, Dk, Dv, S=ref.num_compressed_tokens(T, bs, d))
    o, lse = ref.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    o_bf, lse_bf = brute_compressed(q, kc, vc, bs, d)
    assert o.dtype == F64 and lse.dtype == torch.float32
    assert torch.isneginf(lse[:, : bs - 1]).all() and (o[:, : bs - 1] == 0).all()
    assert_all_close([o], [o_bf])
    torch.testing.assert_close(lse.double(), lse_bf, atol=1e-6, rtol=1e-6)  # lse is float32 by contract
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    assert_all_close(grads(o, (q, kc, vc), w), grads(o_bf, (q, kc, vc), w))
    w = torch.randn(lse.shape, generator=gen, dtype=F64)
    assert_all_close(grads(finite_part(lse), (q, kc), w), grads(finite_part(lse_bf), (q, kc), w),
                     atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_selected_reference_matches_brute_force(gen, shape):
    B, T, Hkv, G, Dk, Dv = (shape[k] for k in ("B", "T", "Hkv", "G", "Dk", "Dv"))
    ss, n = 8, 4
    q, k, v = make_qkv(gen, B, T, Hkv, G, Dk, Dv)
    # arbitrary ids: unused (-1), repeated, and past the query (those must select nothing beyond t)
    idx = torch.randint(-1, -(-T // ss) + 1, (B, T, Hkv, n), generator=gen, dtype=torch.int32)
    o = ref.selected_attention(q, k, v, idx, select_size=ss, scale=0.7)
    o_bf = brute_selected(q, k, v, idx, ss, scale=0.7)
    assert_all_close([o], [o_bf])
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    assert_all_close(grads(o, (q, k, v), w), grads(o_bf, (q, k, v), w))


@pytest.mark.parametrize("window", [1, 7, 16])
@pytest.mark.parametrize("shape", SHAPES)
def test_window_reference_matches_brute_force(gen, shape, window):
    B, T, Hkv, G, Dk, Dv = (shape[k] for k in ("B", "T", "Hkv", "G", "Dk", "Dv"))
    q, k, v = make_qkv(gen, B, T, Hkv, G, Dk, Dv)
    o = ref.window_attention(q, k, v, window=window)
    o_bf = brute_window(q, k, v, window)
    assert_all_close([o], [o_bf])
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    assert_all_close(grads(o, (q, k, v), w), grads(o_bf, (q, k, v), w))


# ----------------------------------------------------------------------------------------------
# block selection


SELECT_CASES = [  # (block_size, stride, select_size, num_select, num_init, num_local, T)
    pytest.param((8, 4, 16, 5, 1, 2, 150), id="default-forcing"),
    pytest.param((32, 16, 64, 4, 1, 2, 300), id="paper-ratios"),
    pytest.param((4, 2, 8, 6, 2, 1, 90), id="init2-local1"),
    pytest.param((8, 8, 8, 3, 0, 0, 70), id="pure-top-k"),
]


@pytest.mark.parametrize("case", SELECT_CASES)
def test_select_blocks_properties_and_brute_force(gen, case):
    bs, d, ss, n, num_init, num_local, T = case
    B, Hkv, G, D = 1, 2, 2, 8
    q = randn(gen, B, T, Hkv * G, D, grad=False)
    kc = randn(gen, B, ref.num_compressed_tokens(T, bs, d), Hkv, D, grad=False)
    _, lse = ref.compressed_attention(q, kc, kc, block_size=bs, stride=d)
    sizes = dict(block_size=bs, stride=d, select_size=ss, num_select=n, num_init=num_init, num_local=num_local)
    idx = ref.select_blocks(q, kc, lse, **sizes)
    assert idx.dtype == torch.int32 and idx.shape == (B, T, Hkv, n)
    expected = brute_selection(q, kc, bs, d, ss, n, num_init, num_local)
    for b in range(B):
        for t in range(T):
            current = t // ss
            forced = {j for j in range(current + 1) if j < num_init or j > current - num_local}
            for g in range(Hkv):
                row = idx[b, t, g].tolist()
                ids = [j for j in row if j != -1]
                n_valid = min(n, current + 1)  # every visible block fits, or all n slots are used
                assert row == ids + [-1] * (n - len(ids)), f"-1 must only pad unused slots: {row}"
                assert len(ids) == len(set(ids)) == n_valid, row
                assert all(0 <= j <= current for j in ids), f"future block chosen at t={t}: {row}"
                assert forced <= set(ids), f"forced {forced} missing at t={t}: {row}"
                assert set(ids) == expected[b][t][g], (t, g, row, expected[b][t][g])
    # the chunked path picks the identical blocks, several chunks deep
    assert torch.equal(chunked.select_blocks(q, kc, lse, **sizes, chunk_size=16), idx)
    assert torch.equal(kernels.select_blocks(q, kc, lse, **sizes), idx)


def test_select_blocks_ties_go_to_lower_block_id(gen):
    # all-zero queries make every visible compressed token equally important; with stride = block_size =
    # select_size every block then scores the same, so the free slots must go to the lowest non-forced ids
    T, ss = 40, 4
    q = torch.zeros(1, T, 2, 4, dtype=F64)
    kc = randn(gen, 1, T // ss, 1, 4, grad=False)
    _, lse = ref.compressed_attention(q, kc, kc, block_size=ss, stride=ss)
    idx = ref.select_blocks(q, kc, lse, block_size=ss, stride=ss, select_size=ss, num_select=4)
    t = T - 1  # current block 9; forced {0, 8, 9}; free slot -> block 1
    assert idx[0, t, 0].tolist() == [0, 1, 8, 9]
    assert torch.equal(chunked.select_blocks(q, kc, lse, block_size=ss, stride=ss, select_size=ss,
                                             num_select=4, chunk_size=8), idx)


def test_select_blocks_has_no_gradient(gen):
    q, kc, _ = make_qkv(gen, 1, 40, 2, 2, 8, 8, S=ref.num_compressed_tokens(40, 8, 4))
    _, lse = kernels.compressed_attention(q, kc, kc, block_size=8, stride=4)
    for op in (ref.select_blocks, kernels.select_blocks):
        idx = op(q, kc, lse, block_size=8, stride=4, select_size=16, num_select=3)
        assert not idx.requires_grad and idx.grad_fn is None


def test_overlap_weights_match_nsa_md():
    # NSA.md: for l=32, d=16, l'=64 the weights of compressed tokens 4j-1 .. 4j+3 on block j are 1,2,2,2,1
    W = ref.overlap_weights(39, 10, block_size=32, stride=16, select_size=64, dtype=F64)
    for j in range(1, 9):
        assert W[4 * j - 1: 4 * j + 4, j].tolist() == [1, 2, 2, 2, 1]
        assert W[:, j].sum() == 64 * (32 // 16) / 16  # each of the l' tokens lies in l/d compressed blocks
    # every compressed token spreads exactly l/d over the blocks (tokens 0..38 lie inside 10*64 tokens)
    torch.testing.assert_close(W.sum(dim=1), torch.full((39,), 2.0, dtype=F64))


# ----------------------------------------------------------------------------------------------
# chunked / dispatched path against the reference (float64, outputs and gradients)


@pytest.mark.parametrize("chunk", [16, 7])
@pytest.mark.parametrize("shape", SHAPES)
def test_chunked_path_matches_reference(gen, shape, chunk):
    B, T, Hkv, G, Dk, Dv = (shape[k] for k in ("B", "T", "Hkv", "G", "Dk", "Dv"))
    T = 3 * T  # several chunks of every size
    bs, d, ss, n, w = 8, 4, 16, 4, 11
    q, k, v = make_qkv(gen, B, T, Hkv, G, Dk, Dv)
    Tc = ref.num_compressed_tokens(T, bs, d)
    kc, vc = randn(gen, B, Tc, Hkv, Dk), randn(gen, B, Tc, Hkv, Dv)

    o_r, lse_r = ref.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    o_c, lse_c = chunked.compressed_attention(q, kc, vc, block_size=bs, stride=d, chunk_size=chunk)
    assert_all_close([o_c], [o_r])
    torch.testing.assert_close(lse_c, lse_r, atol=1e-6, rtol=1e-6)
    wo, wl = torch.randn(o_r.shape, generator=gen, dtype=F64), torch.randn(lse_r.shape, generator=gen, dtype=F64)
    assert_all_close(grads(o_c, (q, kc, vc), wo), grads(o_r, (q, kc, vc), wo))
    assert_all_close(grads(finite_part(lse_c), (q, kc), wl), grads(finite_part(lse_r), (q, kc), wl))

    sizes = dict(block_size=bs, stride=d, select_size=ss, num_select=n)
    idx = ref.select_blocks(q, kc, lse_r, **sizes)
    assert torch.equal(chunked.select_blocks(q, kc, lse_r, **sizes, chunk_size=chunk), idx)

    o_r = ref.selected_attention(q, k, v, idx, select_size=ss)
    o_c = chunked.selected_attention(q, k, v, idx, select_size=ss, chunk_size=chunk)
    assert_all_close([o_c], [o_r])
    assert_all_close(grads(o_c, (q, k, v), wo), grads(o_r, (q, k, v), wo))

    o_r = ref.window_attention(q, k, v, window=w)
    o_c = chunked.window_attention(q, k, v, window=w, chunk_size=chunk)
    assert_all_close([o_c], [o_r])
    assert_all_close(grads(o_c, (q, k, v), wo), grads(o_r, (q, k, v), wo))


def test_chunked_selected_handles_repeated_and_out_of_range_ids(gen):
    B, T, Hkv, G, D, ss = 2, 50, 2, 2, 8, 8
    q, k, v = make_qkv(gen, B, T, Hkv, G, D, D)
    idx = torch.randint(-3, T // ss + 3, (B, T, Hkv, 6), generator=gen, dtype=torch.int64)
    idx[..., 1] = idx[..., 0]  # guaranteed repeats
    o_r = ref.selected_attention(q, k, v, idx, select_size=ss)
    o_c = chunked.selected_attention(q, k, v, idx, select_size=ss, chunk_size=9)
    assert_all_close([o_c], [o_r])
    w = torch.randn(o_r.shape, generator=gen, dtype=F64)
    assert_all_close(grads(o_c, (q, k, v), w), grads(o_r, (q, k, v), w))


def test_public_ops_match_reference_across_default_tiles(gen):
    # T > chunked.QUERY_TILE, so the public (dispatched) CPU path runs several default-size tiles
    B, T, Hkv, G, D = 1, chunked.QUERY_TILE + 77, 2, 2, 8
    bs, d, ss, n, w = 16, 8, 32, 4, 40
    q, k, v = make_qkv(gen, B, T, Hkv, G, D, D)
    Tc = ref.num_compressed_tokens(T, bs, d)
    kc, vc = randn(gen, B, Tc, Hkv, D), randn(gen, B, Tc, Hkv, D)
    wo = torch.randn(q.shape, generator=gen, dtype=F64)

    (o_r, lse_r), (o_p, lse_p) = (m.compressed_attention(q, kc, vc, block_size=bs, stride=d) for m in (ref, kernels))
    assert_all_close([o_p], [o_r])
    torch.testing.assert_close(lse_p, lse_r, atol=1e-6, rtol=1e-6)
    assert_all_close(grads(o_p, (q, kc, vc), wo), grads(o_r, (q, kc, vc), wo))
    sizes = dict(block_size=bs, stride=d, select_size=ss, num_select=n)
    idx = kernels.select_blocks(q, kc, lse_p, **sizes)
    assert torch.equal(idx, ref.select_blocks(q, kc, lse_r, **sizes))
    o_r, o_p = (m.selected_attention(q, k, v, idx, select_size=ss) for m in (ref, kernels))
    assert_all_close([o_p], [o_r])
    assert_all_close(grads(o_p, (q, k, v), wo), grads(o_r, (q, k, v), wo))
    o_r, o_p = (m.window_attention(q, k, v, window=w) for m in (ref, kernels))
    assert_all_close([o_p], [o_r])
    assert_all_close(grads(o_p, (q, k, v), wo), grads(o_r, (q, k, v), wo))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_keep_dtype_and_accuracy(gen, dtype):
    B, T, Hkv, G, D, bs, d, ss = 2, 70, 2, 2, 16, 8, 4, 16
    q64, k64, v64 = make_qkv(gen, B, T, Hkv, G, D, D, S=T)
    kc64 = randn(gen, B, ref.num_compressed_tokens(T, bs, d), Hkv, D)
    q, k, v, kc = (x.detach().to(dtype) for x in (q64, k64, v64, kc64))
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    for m in (ref, kernels):
        o, lse = m.compressed_attention(q, kc, kc, block_size=bs, stride=d)
        assert o.dtype == dtype and lse.dtype == torch.float32
        o64, lse64 = ref.compressed_attention(q.double(), kc.double(), kc.double(), block_size=bs, stride=d)
        torch.testing.assert_close(o.double(), o64, **tol)
        torch.testing.assert_close(lse, lse64, **tol)
        idx = ref.select_blocks(q64, kc64, lse64, block_size=bs, stride=d, select_size=ss, num_select=3)
        o = m.selected_attention(q, k, v, idx, select_size=ss)
        assert o.dtype == dtype
        torch.testing.assert_close(o.double(), ref.selected_attention(q.double(), k.double(), v.double(),
                                                                      idx, select_size=ss), **tol)
        o = m.window_attention(q, k, v, window=9)
        assert o.dtype == dtype
        torch.testing.assert_close(o.double(), ref.window_attention(q.double(), k.double(), v.double(),
                                                                    window=9), **tol)


def test_triton_dispatch_plug_in_point(gen, monkeypatch):
    q, k, v = make_qkv(gen, 1, 20, 1, 2, 4, 4)
    expected = ref.window_attention(q, k, v, window=5)
    monkeypatch.setattr(kernels, "TRITON_OPS", {})
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # no kernel registered: falls back to PyTorch
    torch.testing.assert_close(kernels.window_attention(q, k, v, window=5), expected)
    calls = []

    def fake_kernel(q, k, v, *, window, scale=None):
        calls.append(window)
        return chunked.window_attention(q, k, v, window=window, scale=scale)

    monkeypatch.setitem(kernels.TRITON_OPS, "window_attention", fake_kernel)
    torch.testing.assert_close(kernels.window_attention(q, k, v, window=5), expected)
    assert calls == [5]  # TRITON_INTERPRET=1 on CPU routes to the registered kernel
    monkeypatch.delenv("TRITON_INTERPRET")
    kernels.window_attention(q, k, v, window=5)
    assert calls == [5]  # plain CPU does not


class _LargestStorage(TorchDispatchMode):
    """Records the largest tensor storage (in elements) produced by any op, forward or backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.untyped_storage().nbytes() // x.element_size())
        return out


def test_chunked_path_never_builds_a_T_by_T_matrix(gen):
    B, T, Hkv, G, D = 1, 2048, 1, 1, 8
    bs, d, ss, n, w = 16, 8, 32, 4, 64
    q, k, v = make_qkv(gen, B, T, Hkv, G, D, D)
    kc = randn(gen, B, ref.num_compressed_tokens(T, bs, d), Hkv, D)
    idx = torch.randint(0, T // ss, (B, T, Hkv, n), generator=gen, dtype=torch.int32)
    saved = {}  # storage -> elements, for every tensor autograd keeps for the backward

    def pack(x):
        saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes() // x.element_size()
        return x

    with _LargestStorage() as chunked_run:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            o, lse = kernels.compressed_attention(q, kc, kc, block_size=bs, stride=d)
            o = o + kernels.selected_attention(q, k, v, idx, select_size=ss)
            o = o + kernels.window_attention(q, k, v, window=w)
        kernels.select_blocks(q, kc, lse, block_size=bs, stride=d, select_size=ss, num_select=n)
        o.sum().backward()
    assert chunked_run.largest < T * T // 4, chunked_run.largest
    # tiles are recomputed in the backward: autograd keeps the inputs (and one blocked copy of k, v),
    # not per-tile scores (without checkpointing this would be ~30x larger)
    assert sum(saved.values()) <= 2 * sum(x.numel() for x in (q, k, v, kc, idx)), sum(saved.values())
    with _LargestStorage() as dense_run:  # the check can fail: the dense reference does build [T, T]
        ref.window_attention(q, k, v, window=w)
    assert dense_run.largest >= T * T


# ----------------------------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("m", [ref, kernels], ids=["reference", "public"])
def test_sequence_shorter_than_a_compression_block(gen, m):
    B, T, Hkv, G, D, bs, d, ss = 2, 5, 2, 2, 8, 8, 4, 16
    q, k, v = make_qkv(gen, B, T, Hkv, G, D, D)
    kc, vc = randn(gen, B, 0, Hkv, D), randn(gen, B, 0, Hkv, D)  # no compressed token exists
    o, lse = m.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    assert (o == 0).all() and torch.isneginf(lse).all()
    gq, gk, gv = grads(o, (q, kc, vc), torch.randn(o.shape, generator=gen, dtype=F64))
    assert (gq == 0).all() and gk.shape == kc.shape and gv.shape == vc.shape
    idx = m.select_blocks(q, kc, lse, block_size=bs, stride=d, select_size=ss, num_select=3)
    assert (idx[..., 0] == 0).all() and (idx[..., 1:] == -1).all()  # only block 0 exists
    o = m.selected_attention(q, k, v, idx, select_size=ss) + m.window_attention(q, k, v, window=3)
    for g in grads(o, (q, k, v), torch.randn(o.shape, generator=gen, dtype=F64)):
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("m", [ref, kernels], ids=["reference", "public"])
def test_sequence_shorter_than_a_selection_block_and_the_window(gen, m):
    # one selection block holds everything and the window covers everything: both are causal attention
    B, T, Hkv, G, Dk, Dv = 1, 13, 2, 3, 8, 5
    q, k, v = make_qkv(gen, B, T, Hkv, G, Dk, Dv)
    causal = brute_window(q, k, v, T)
    idx = torch.full((B, T, Hkv, 2), -1, dtype=torch.int32)
    idx[..., 0] = 0
    w = torch.randn(causal.shape, generator=gen, dtype=F64)
    for o in (m.selected_attention(q, k, v, idx, select_size=16), m.window_attention(q, k, v, window=100)):
        assert_all_close([o], [causal])
        assert_all_close(grads(o, (q, k, v), w), grads(causal, (q, k, v), w))


@pytest.mark.parametrize("m", [ref, chunked], ids=["reference", "chunked"])
def test_selected_with_no_valid_block_is_zero_not_nan(gen, m):
    q, k, v = make_qkv(gen, 1, 12, 1, 2, 4, 4)
    idx = torch.full((1, 12, 1, 3), -1, dtype=torch.int32)
    o = m.selected_attention(q, k, v, idx, select_size=4)
    assert (o == 0).all()
    for g in grads(o, (q, k, v), torch.randn(o.shape, generator=gen, dtype=F64)):
        assert (g == 0).all()


# ----------------------------------------------------------------------------------------------
# size validation


@pytest.mark.parametrize("sizes, message", [
    (dict(n_heads=6, n_kv_heads=4), "not a multiple of n_kv_heads"),
    (dict(block_size=32, stride=12), "stride=12 must divide block_size=32"),
    (dict(block_size=32, stride=16, select_size=40), "must divide select_size=40"),
    (dict(block_size=64, stride=16, select_size=32), "block_size=64 must be <= select_size=32"),
    (dict(num_select=2), "num_select=2 < num_init=1 + num_local=2"),
    (dict(num_select=3, num_init=2, num_local=2), "num_select=3 < num_init=2"),
    (dict(block_size=0), "block_size=0 must be positive"),
    (dict(window=-4), "window=-4 must be positive"),
    (dict(num_local=-1), "num_local=-1 must be non-negative"),
    (dict(stride=16.0), "stride must be an int"),
])
def test_check_nsa_sizes_rejects_bad_sizes(sizes, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        kernels.check_nsa_sizes(**sizes)
    assert "\n" not in str(err.value)


def test_check_nsa_sizes_accepts_paper_defaults():
    kernels.check_nsa_sizes(n_heads=64, n_kv_heads=4, block_size=32, stride=16, select_size=64, num_select=16,
                            num_init=1, num_local=2, window=512)


def _bad_calls():
    q, k, v = torch.randn(1, 20, 4, 8), torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 6)
    kc = torch.randn(1, 4, 2, 8)  # (20 - 8) // 4 + 1 compressed tokens for block_size=8, stride=4
    lse = torch.zeros(1, 20, 4)
    idx = torch.zeros(1, 20, 2, 3, dtype=torch.int32)
    cmp = dict(block_size=8, stride=4)
    sel = dict(cmp, select_size=16, num_select=3)
    return [
        (lambda m: m.window_attention(q, k[:, :10], v[:, :10], window=4), "expected 20"),
        (lambda m: m.window_attention(q, k, v[:, :10], window=4), "k has 20 positions but v has 10"),
        (lambda m: m.window_attention(q[:, :, :3], k, v, window=4), "n_heads=3 is not a multiple"),
        (lambda m: m.window_attention(q, k[..., :4], v, window=4), "q head dim 8 != k head dim 4"),
        (lambda m: m.window_attention(q, k.expand(2, -1, -1, -1), v, window=4), "batch sizes differ"),
        (lambda m: m.window_attention(q, k, v.double(), window=4), "must share one dtype"),
        (lambda m: m.window_attention(q[0], k, v, window=4), "4-D BTHD"),
        (lambda m: m.window_attention(q, k, v, window=0), "window=0 must be positive"),
        (lambda m: m.compressed_attention(q, kc[:, :3], kc[:, :3], **cmp), "k_cmp has 3 positions, expected 4"),
        (lambda m: m.compressed_attention(q, kc, kc, block_size=8, stride=3), "stride=3 must divide"),
        (lambda m: m.select_blocks(q, kc, lse[..., :2], **sel), "lse must have shape"),
        (lambda m: m.select_blocks(q, kc, lse, **dict(sel, num_select=2)), "num_select=2 <"),
        (lambda m: m.select_blocks(q, kc, lse, **dict(sel, select_size=4)), "block_size=8 must be <="),
        (lambda m: m.selected_attention(q, k, v, idx[:, :5], select_size=16), "idx must have shape"),
        (lambda m: m.selected_attention(q, k, v, idx.float(), select_size=16), "integer tensor"),
        (lambda m: m.selected_attention(q, k, v, idx, select_size=0), "select_size=0 must be positive"),
    ]


@pytest.mark.parametrize("m", [ref, kernels], ids=["reference", "public"])
@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_ops_reject_bad_inputs_with_one_line_error(m, case):
    call, message = _bad_calls()[case]
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        call(m)
    assert "\n" not in str(err.value)
