"""The `q_start` argument of NSA's four kernel ops: queries at positions q_start .. q_start+T-1 against keys
0 .. q_start+T-1 (how the model runs chunked prefill and decoding after a cached prefix).

Contract checked here: an op called on the last rows of q with q_start equals the same rows of the op called
on the whole sequence with q_start = 0, outputs and gradients (float64), through the reference, the chunked
path (several tiles) and the public dispatcher; one decoding step (T = 1) does no work per key of the
sequence; bad q_start is a one-line ValueError.
"""

from __future__ import annotations

import re
import zlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import kernels
from kernels import chunked
from kernels import reference as ref

F64 = torch.float64
BS, D, SS, N, W = 8, 4, 16, 4, 11  # block_size l, stride d, select_size l', num_select n, window w
T = 45  # not a multiple of any block size
PATHS = {  # path name -> (module, extra kwargs)
    "reference": (ref, {}),
    "chunked": (chunked, dict(chunk_size=4)),  # several tiles, one of them partial
    "public": (kernels, {}),
}


@pytest.fixture
def gen(request) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def randn(gen, *shape, grad=True):
    return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(grad)


def grads(out, inputs, weight):
    return torch.autograd.grad((out * weight).sum(), inputs, retain_graph=True, allow_unused=True,
                               materialize_grads=True)


def assert_close(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)


def finite_part(lse):
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


# q_start: 0, inside a compression block (no compressed token visible yet), on a selection-block boundary,
# T - 1 (one decoding step). G = 1 and G = 4, Dv != Dk both ways.
STARTS = [0, 5, 2 * SS, T - 1]
SHAPES = [
    pytest.param(dict(B=2, Hkv=3, G=1, Dk=8, Dv=5), id="G1-Dv<Dk"),
    pytest.param(dict(B=1, Hkv=2, G=4, Dk=4, Dv=6), id="G4-Dv>Dk"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("s", STARTS)
def test_offset_rows_equal_full_sequence_rows(gen, shape, s, path):
    B, Hkv, G, Dk, Dv = (shape[k] for k in ("B", "Hkv", "G", "Dk", "Dv"))
    m, kw = PATHS[path]
    Tc = ref.num_compressed_tokens(T, BS, D)
    q, k, v = randn(gen, B, T, Hkv * G, Dk), randn(gen, B, T, Hkv, Dk), randn(gen, B, T, Hkv, Dv)
    kc, vc = randn(gen, B, Tc, Hkv, Dk), randn(gen, B, Tc, Hkv, Dv)
    qs = q[:, s:]  # the queries at positions s .. T-1 (a slice: gradients land in q's rows s..)
    wo = torch.randn(B, T - s, Hkv * G, Dv, generator=gen, dtype=F64)
    wl = torch.randn(B, T - s, Hkv * G, generator=gen, dtype=F64)

    # compression branch: o and lse, and gradients of both
    o_full, lse_full = ref.compressed_attention(q, kc, vc, block_size=BS, stride=D)
    o, lse = m.compressed_attention(qs, kc, vc, block_size=BS, stride=D, q_start=s, **kw)
    assert o.shape == (B, T - s, Hkv * G, Dv) and lse.shape == (B, T - s, Hkv * G) and lse.dtype == torch.float32
    assert_close([o], [o_full[:, s:]])
    torch.testing.assert_close(lse, lse_full[:, s:], atol=1e-6, rtol=1e-6)  # lse is float32 by contract
    assert_close(grads(o, (q, kc, vc), wo), grads(o_full[:, s:], (q, kc, vc), wo))
    assert_close(grads(finite_part(lse), (q, kc), wl), grads(finite_part(lse_full[:, s:]), (q, kc), wl))

    # block selection (no gradient): identical ids
    sizes = dict(block_size=BS, stride=D, select_size=SS, num_select=N)
    idx_full = ref.select_blocks(q, kc, lse_full, **sizes)
    idx = m.select_blocks(qs, kc, lse_full[:, s:], **sizes, q_start=s, **kw)
    assert idx.dtype == torch.int32 and torch.equal(idx, idx_full[:, s:])

    # selected attention, with the real selection and with arbitrary ids (unused, repeated, in the future)
    rand_idx = torch.randint(-1, -(-T // SS) + 1, (B, T, Hkv, N), generator=gen, dtype=torch.int32)
    for ids in (idx_full, rand_idx):
        o_full = ref.selected_attention(q, k, v, ids, select_size=SS)
        o = m.selected_attention(qs, k, v, ids[:, s:], select_size=SS, q_start=s, **kw)
        assert_close([o], [o_full[:, s:]])
        assert_close(grads(o, (q, k, v), wo), grads(o_full[:, s:], (q, k, v), wo))

    # window
    o_full = ref.window_attention(q, k, v, window=W)
    o = m.window_attention(qs, k, v, window=W, q_start=s, **kw)
    assert_close([o], [o_full[:, s:]])
    assert_close(grads(o, (q, k, v), wo), grads(o_full[:, s:], (q, k, v), wo))


def test_decoding_token_by_token_equals_the_full_sequence(gen):
    """Every position as its own T = 1 call (what decoding does), through the public ops."""
    B, Hkv, G, Dk, Dv, n_steps = 1, 2, 2, 8, 4, 40
    q, k, v = randn(gen, B, n_steps, Hkv * G, Dk, grad=False), randn(gen, B, n_steps, Hkv, Dk, grad=False), \
        randn(gen, B, n_steps, Hkv, Dv, grad=False)
    kc_all = randn(gen, B, ref.num_compressed_tokens(n_steps, BS, D), Hkv, Dk, grad=False)
    sizes = dict(block_size=BS, stride=D, select_size=SS, num_select=N)
    o_c, lse = ref.compressed_attention(q, kc_all, kc_all, block_size=BS, stride=D)
    idx = ref.select_blocks(q, kc_all, lse, **sizes)
    o_s = ref.selected_attention(q, k, v, idx, select_size=SS)
    o_w = ref.window_attention(q, k, v, window=W)
    for t in range(n_steps):
        kc = kc_all[:, : ref.num_compressed_tokens(t + 1, BS, D)]
        qt, kt, vt = q[:, t : t + 1], k[:, : t + 1], v[:, : t + 1]
        o1, lse1 = kernels.compressed_attention(qt, kc, kc, block_size=BS, stride=D, q_start=t)
        idx1 = kernels.select_blocks(qt, kc, lse1, **sizes, q_start=t)
        assert torch.equal(idx1, idx[:, t : t + 1]), t
        assert_close([o1, kernels.selected_attention(qt, kt, vt, idx1, select_size=SS, q_start=t),
                      kernels.window_attention(qt, kt, vt, window=W, q_start=t)],
                     [o_c[:, t : t + 1], o_s[:, t : t + 1], o_w[:, t : t + 1]])


@pytest.mark.gpu
@pytest.mark.parametrize("s", [37, T - 1])
def test_offset_on_cuda_matches_the_full_sequence(s):
    """On CUDA: the full-sequence call runs the Triton kernels, the offset call whatever the dispatcher picks for
    q_start != 0 (the chunked path on CUDA tensors, unless the kernel takes q_start). float32 tolerances."""
    g = torch.Generator(device="cuda").manual_seed(s)
    B, Hkv, G, Dk, Dv = 2, 2, 4, 16, 32

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device="cuda").requires_grad_()

    Tc = ref.num_compressed_tokens(T, BS, D)
    q, k, v, kc, vc = rnd(B, T, Hkv * G, Dk), rnd(B, T, Hkv, Dk), rnd(B, T, Hkv, Dv), rnd(B, Tc, Hkv, Dk), \
        rnd(B, Tc, Hkv, Dv)
    sizes = dict(block_size=BS, stride=D, select_size=SS, num_select=N)
    wo = torch.randn(B, T - s, Hkv * G, Dv, generator=g, device="cuda")
    o_full, lse_full = kernels.compressed_attention(q, kc, vc, block_size=BS, stride=D)
    idx_full = kernels.select_blocks(q, kc, lse_full, **sizes)
    outs_full = [o_full, kernels.selected_attention(q, k, v, idx_full, select_size=SS),
                 kernels.window_attention(q, k, v, window=W)]
    o, lse = kernels.compressed_attention(q[:, s:], kc, vc, block_size=BS, stride=D, q_start=s)
    torch.testing.assert_close(lse, lse_full[:, s:], atol=1e-4, rtol=1e-4)
    assert torch.equal(kernels.select_blocks(q[:, s:], kc, lse, **sizes, q_start=s), idx_full[:, s:])
    outs = [o, kernels.selected_attention(q[:, s:], k, v, idx_full[:, s:], select_size=SS, q_start=s),
            kernels.window_attention(q[:, s:], k, v, window=W, q_start=s)]
    for a, e in zip(outs, outs_full, strict=True):
        torch.testing.assert_close(a, e[:, s:], atol=1e-4, rtol=1e-4)
        for ga, ge in zip(grads(a, (q, k, v, kc, vc), wo), grads(e[:, s:], (q, k, v, kc, vc), wo), strict=True):
            torch.testing.assert_close(ga, ge, atol=1e-4, rtol=1e-4)


class _ElementsWritten(TorchDispatchMode):
    """Sums the elements of every new tensor an op produces (views of an input are not new data)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        for x in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() not in inputs:
                self.total += x.numel()
        return out


def _decode_step_work(S: int, op: str) -> int:
    """Elements written by one chunked decoding step (T = 1, q_start = S - 1) of `op` at sequence length S."""
    g = torch.Generator().manual_seed(0)
    B, Hkv, G, Dh, bs, d, ss, n, w = 1, 2, 2, 16, 32, 16, 64, 4, 64
    q = torch.randn(B, 1, Hkv * G, Dh, generator=g)
    k, v = torch.randn(B, S, Hkv, Dh, generator=g), torch.randn(B, S, Hkv, Dh, generator=g)
    kc = torch.randn(B, ref.num_compressed_tokens(S, bs, d), Hkv, Dh, generator=g)
    _, lse = chunked.compressed_attention(q, kc, kc, block_size=bs, stride=d, q_start=S - 1)
    last = (S - 1) // ss
    idx = torch.tensor([0, last // 3, last - 1, last], dtype=torch.int32).expand(B, 1, Hkv, n)
    calls = {
        "compressed": lambda: chunked.compressed_attention(q, kc, kc, block_size=bs, stride=d, q_start=S - 1),
        "select": lambda: chunked.select_blocks(q, kc, lse, block_size=bs, stride=d, select_size=ss, num_select=n,
                                                q_start=S - 1),
        "selected": lambda: chunked.selected_attention(q, k, v, idx, select_size=ss, q_start=S - 1),
        "window": lambda: chunked.window_attention(q, k, v, window=w, q_start=S - 1),
    }
    with torch.no_grad(), _ElementsWritten() as counter:
        calls[op]()
    return counter.total


@pytest.mark.parametrize("op", ["compressed", "select", "selected", "window"])
def test_one_decoding_step_does_no_work_per_key(op):
    """T = 1 touches only what the query attends: selected and window work does not grow with the sequence at
    all; compressed and select_blocks work grows with the compressed tokens only (about S/d), never like S."""
    small, large = _decode_step_work(2048, op), _decode_step_work(8192, op)
    if op in ("selected", "window"):
        assert small == large, (small, large)
    else:
        extra_cmp = ref.num_compressed_tokens(8192, 32, 16) - ref.num_compressed_tokens(2048, 32, 16)  # 384
        # per extra compressed token: at most one copy of its key and value (Hkv * 2 * Dh = 64) and a few [Hq]
        # rows of scores / probabilities (8 * 4). A [Tc, S/l'] weight matrix (the dense form of the block
        # scores) would add ~160 per token here, and anything per key position far more.
        assert large - small <= (64 + 8 * 4) * extra_cmp, (small, large)
    assert small < 2048 * 2 * 16  # less than the key tensor itself


def test_dispatch_with_q_start(gen, monkeypatch):
    """Triton ops without a q_start argument are bypassed when q_start != 0 (chunked path instead); one that
    takes q_start gets it."""
    q, k, v = randn(gen, 1, 20, 2, 4), randn(gen, 1, 20, 1, 4), randn(gen, 1, 20, 1, 4)
    expected = ref.window_attention(q, k, v, window=5)[:, 12:]
    calls = []

    def old_kernel(q, k, v, *, window, scale=None):
        calls.append("old")
        return chunked.window_attention(q, k, v, window=window, scale=scale)

    def new_kernel(q, k, v, *, window, scale=None, q_start=0):
        calls.append(("new", q_start))
        return chunked.window_attention(q, k, v, window=window, scale=scale, q_start=q_start)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(kernels, "TRITON_OPS", {"window_attention": old_kernel})
    kernels.window_attention(q, k, v, window=5)
    assert calls == ["old"]  # q_start = 0: the registered kernel, called exactly as before
    assert_close([kernels.window_attention(q[:, 12:], k, v, window=5, q_start=12)], [expected])
    assert calls == ["old"]  # q_start != 0: the chunked path
    monkeypatch.setitem(kernels.TRITON_OPS, "window_attention", new_kernel)
    assert_close([kernels.window_attention(q[:, 12:], k, v, window=5, q_start=12)], [expected])
    assert calls == ["old", ("new", 12)]


def _bad_calls():
    q, k, v = torch.randn(1, 20, 4, 8), torch.randn(1, 25, 2, 8), torch.randn(1, 25, 2, 6)
    kc = torch.randn(1, 5, 2, 8)  # (25 - 8) // 4 + 1 compressed tokens for block_size=8, stride=4
    lse, idx = torch.zeros(1, 20, 4), torch.zeros(1, 20, 2, 3, dtype=torch.int32)
    cmp = dict(block_size=8, stride=4)
    sel = dict(cmp, select_size=16, num_select=3)
    return [
        (lambda m: m.window_attention(q, k, v, window=4, q_start=-1), "q_start=-1 must be a non-negative int"),
        (lambda m: m.window_attention(q, k, v, window=4, q_start=5.0), "q_start=5.0 must be a non-negative int"),
        (lambda m: m.selected_attention(q, k, v, idx, select_size=16, q_start=True), "q_start=True must be"),
        (lambda m: m.compressed_attention(q, kc, kc, **cmp, q_start=-3), "q_start=-3 must be"),
        (lambda m: m.select_blocks(q, kc, lse, **sel, q_start=-2), "q_start=-2 must be"),
        # key lengths that do not match q_start + T
        (lambda m: m.window_attention(q, k, v, window=4, q_start=4),
         "k has 25 positions, expected 24 for q of length 20 at q_start=4"),
        (lambda m: m.window_attention(q, k, v, window=4), "k has 25 positions, expected 20 for q of length 20"),
        (lambda m: m.selected_attention(q, k, v, idx, select_size=16, q_start=6), "expected 26"),
        (lambda m: m.compressed_attention(q, kc, kc, **cmp, q_start=9), "k_cmp has 5 positions, expected 6"),
        (lambda m: m.select_blocks(q, kc, lse, **sel, q_start=0), "k_cmp has 5 positions, expected 4"),
        (lambda m: m.select_blocks(q, kc, lse[:, :1], **sel, q_start=5), "lse must have shape"),
    ]


@pytest.mark.parametrize("m", [ref, kernels], ids=["reference", "public"])
@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_q_start_is_a_one_line_error(m, case):
    call, message = _bad_calls()[case]
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        call(m)
    assert "\n" not in str(err.value)
