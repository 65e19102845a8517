"""Fused linear + cross-entropy (model/loss.py) against F.cross_entropy on the full logits."""

import pytest
import torch
import torch.nn.functional as F

from model.loss import linear_cross_entropy


def inputs(n: int, c: int = 24, v: int = 70, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(v, c, generator=g, dtype=dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < 0.3] = -1  # ignored rows scattered through the chunks
    return h, w, t


def loss_and_grads(fn, h, w, t, upstream: float = 0.7):
    """fn's loss and the gradients of upstream * loss wrt (h, w) (a non-unit upstream checks the scaling)."""
    loss = fn(h, w, t)
    return (loss.detach(), *torch.autograd.grad(upstream * loss, (h, w)))


def reference(h, w, t):
    return F.cross_entropy(h @ w.T, t, ignore_index=-1)


@pytest.mark.parametrize("n, chunk", [(37, 8), (40, 8), (37, 37), (37, 100), (1, 4)])
def test_matches_full_cross_entropy_float64(n, chunk):
    h, w, t = inputs(n, seed=n + chunk)
    t[0] = 3  # at least one valid row even for n=1
    got = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_size=chunk), h, w, t)
    want = loss_and_grads(reference, h, w, t)
    for name, a, b in zip(("loss", "dh", "dW"), got, want):
        assert a.dtype == b.dtype == torch.float64, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_all_targets_ignored_behaves_like_cross_entropy():
    """NaN loss (0 valid targets / 0), zero gradients: what F.cross_entropy(ignore_index=-1) gives."""
    h, w, t = inputs(20)
    t[:] = -1
    got = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_size=8), h, w, t)
    want = loss_and_grads(reference, h, w, t)
    assert torch.isnan(got[0]) and torch.isnan(want[0])
    for a, b in zip(got[1:], want[1:]):
        assert torch.equal(a, b) and not a.any()


@pytest.mark.parametrize("h_grad, w_grad", [(True, False), (False, True), (False, False)])
def test_only_inputs_that_require_grad_get_one(h_grad, w_grad):
    h, w, t = inputs(30)
    h.requires_grad_(h_grad)
    w.requires_grad_(w_grad)
    loss = linear_cross_entropy(h, w, t, chunk_size=8)
    ref = reference(h.detach().requires_grad_(), w.detach().requires_grad_(), t)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-12)
    assert loss.requires_grad == (h_grad or w_grad)
    if loss.requires_grad:
        loss.backward()
    assert (h.grad is not None) == h_grad and (w.grad is not None) == w_grad
    with torch.no_grad():
        assert not linear_cross_entropy(h, w, t, chunk_size=8).requires_grad


def test_gradients_accumulate_into_a_shared_weight():
    """A weight also used elsewhere (tied embedding) gets the sum of both gradients."""
    h, w, t = inputs(30)
    ids = torch.randint(0, w.shape[0], (5,))
    fused = linear_cross_entropy(h, w, t, chunk_size=8) + F.embedding(ids, w).square().sum()
    plain = reference(h, w, t) + F.embedding(ids, w).square().sum()
    for a, b in zip(torch.autograd.grad(fused, (h, w)), torch.autograd.grad(plain, (h, w))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_autocast_runs_the_matmuls_in_bf16():
    """float32 inputs under bf16 autocast: the logits are those of bf16 matmuls (as autocast's lm_head would
    give), the softmax is float32, and loss and gradients come back in float32."""
    h, w, t = inputs(50, c=64, v=300, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_size=16), h, w, t)
        want = loss_and_grads(lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t, ignore_index=-1), h, w, t)
    fp32 = loss_and_grads(reference, h, w, t)
    assert all(x.dtype == torch.float32 for x in got)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)  # same bf16 logits, float32 softmax
    assert (got[0] - fp32[0]).abs() > 1e-4  # ... which are not the float32 ones
    for a, b in zip(got[1:], want[1:]):  # bf16 matmuls: agree to bf16 precision
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


@pytest.mark.parametrize("autocast", [False, True])
def test_torch_compile_fullgraph(autocast):
    """Dynamo traces the autograd.Function, chunk loop included, without a graph break; same numbers as eager."""
    h, w, t = inputs(45, dtype=torch.float32)

    def fn(h, w, t):  # the fused loss inside a larger graph, traced with it in one piece
        return linear_cross_entropy(torch.tanh(h) * 2, w, t, chunk_size=16)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = loss_and_grads(compiled, h, w, t)
        want = loss_and_grads(fn, h, w, t)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_chunk_size_fails_clearly():
    h, w, t = inputs(4)
    with pytest.raises(ValueError, match="chunk_size=0 must be positive"):
        linear_cross_entropy(h, w, t, chunk_size=0)
