"""The Triton NSA kernels under Triton's CPU interpreter, against kernels/reference.py.

Not collected by a plain `pytest` run (the name does not start with test_): Triton reads
TRITON_INTERPRET when it is imported, so these cases must run in a process that set it first.
tests/test_kernels_triton.py launches them that way:

    TRITON_INTERPRET=1 python -m pytest tests/_triton_interpret_cases.py

Every case goes through the public ops in kernels/ (checking that they dispatch to the Triton kernels),
draws fresh random float64 inputs (the seed is in the failure message), and compares outputs and the
gradients dq, dk, dv (dk_cmp, dv_cmp for the compressed branch) with the reference. Shapes are small
(the interpreter is slow) but cover G = 1, 2, 4, 16, T not a multiple of any block, Dv != Dk, T < l.
"""

from __future__ import annotations

import os
import random

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("run this module with TRITON_INTERPRET=1 set (tests/test_kernels_triton.py does that)")

import pytest  # noqa: E402
import torch  # noqa: E402

import kernels  # noqa: E402
from kernels import ops  # noqa: E402
from kernels import reference as ref  # noqa: E402
from tests.conftest import set_tiles  # noqa: E402

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))  # fresh every run


def randn(gen, *shape, dtype=F64, grad=True):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).requires_grad_(grad)


def grads(out, inputs, weight):
    return torch.autograd.grad((out * weight).sum(), inputs, retain_graph=True, allow_unused=True,
                               materialize_grads=True)


def close(actual, expected, what, gen, atol=1e-9, rtol=1e-9):
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.shape == e.shape, f"{what}[{i}]: shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert torch.isfinite(a).all(), f"{what}[{i}]: non-finite values (seed {gen.initial_seed()})"
        torch.testing.assert_close(a.to(e.dtype), e, atol=atol, rtol=rtol,
                                   msg=lambda m, i=i: f"{what}[{i}] (seed {gen.initial_seed()}): {m}")


def finite(lse):
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def test_dispatch_reaches_the_triton_kernels():
    x = torch.zeros(1, 4, 1, 16)
    for name in ("compressed_attention", "select_blocks", "selected_attention", "window_attention"):
        assert kernels._impl(name, x) is ops.TRITON_OPS[name], name
    assert ops.runs_triton(x)


# ----------------------------------------------------------------------------------------------
# compressed attention

CMP_CASES = [  # B, T, Hkv, G, Dk, Dv, block_size, stride
    pytest.param((1, 77, 2, 2, 16, 16, 8, 4), id="G2"),
    pytest.param((1, 50, 1, 16, 16, 8, 16, 8), id="G16-Dv<Dk"),
    pytest.param((2, 45, 2, 1, 16, 32, 8, 8), id="G1-Dv>Dk-l=d"),
    pytest.param((1, 41, 1, 4, 32, 16, 4, 2), id="G4"),
    pytest.param((1, 6, 2, 2, 16, 16, 8, 4), id="T<l"),
    pytest.param((1, 230, 1, 2, 16, 16, 8, 4), id="G2-T230"),  # whole key tiles before the diagonal
]


@pytest.mark.parametrize("case", CMP_CASES)
def test_compressed_attention(gen, case):
    B, T, Hkv, G, Dk, Dv, bs, d = case
    Tc = ref.num_compressed_tokens(T, bs, d)
    q, kc, vc = randn(gen, B, T, Hkv * G, Dk), randn(gen, B, Tc, Hkv, Dk), randn(gen, B, Tc, Hkv, Dv)
    o, lse = kernels.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    o_r, lse_r = ref.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    assert o.dtype == F64 and lse.dtype == torch.float32
    close([o], [o_r], "o", gen)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_r))
    close([finite(lse)], [finite(lse_r)], "lse", gen, atol=1e-6, rtol=1e-6)  # lse is float32 by contract
    wo = torch.randn(o.shape, generator=gen, dtype=F64)
    close(grads(o, (q, kc, vc), wo), grads(o_r, (q, kc, vc), wo), "d(q, k_cmp, v_cmp) via o", gen)
    # through lse too (the reference's lse path is float32, hence the looser tolerance)
    wl = torch.randn(lse.shape, generator=gen, dtype=F64)
    loss, loss_r = (o * wo).sum() + (finite(lse) * wl).sum(), (o_r * wo).sum() + (finite(lse_r) * wl).sum()
    close(torch.autograd.grad(loss, (q, kc, vc), materialize_grads=True, allow_unused=True),
          torch.autograd.grad(loss_r, (q, kc, vc), materialize_grads=True, allow_unused=True),
          "d(q, k_cmp, v_cmp) via o and lse", gen, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# block selection

SELECT_CASES = [  # T, Hkv, G, D, block_size, stride, select_size, num_select, num_init, num_local
    pytest.param((150, 2, 2, 16, 8, 4, 16, 5, 1, 2), id="default-forcing-G2"),
    pytest.param((300, 1, 4, 16, 32, 16, 64, 4, 1, 2), id="paper-ratios-G4"),
    pytest.param((90, 2, 1, 16, 4, 2, 8, 6, 2, 1), id="init2-local1-G1"),
    pytest.param((70, 1, 2, 16, 8, 8, 8, 3, 0, 0), id="pure-top-k"),
    pytest.param((130, 1, 16, 16, 8, 4, 16, 5, 1, 2), id="G16"),
    pytest.param((100, 1, 3, 32, 16, 8, 48, 7, 1, 2), id="G3-l'=48"),
    pytest.param((5, 2, 2, 16, 8, 4, 16, 3, 1, 2), id="T<l"),
    pytest.param((600, 1, 2, 16, 8, 4, 8, 3, 1, 2), id="75-blocks-19-tiles"),  # merges inside and at the end
]


@pytest.mark.parametrize("tma", [0, 1], ids=["gather", "tma"])  # the compressed keys through a tensor descriptor
@pytest.mark.parametrize("case", SELECT_CASES)
def test_select_blocks_matches_reference_exactly(gen, case, tma, monkeypatch):
    set_tiles(monkeypatch, ["select"], tma=tma)
    T, Hkv, G, D, bs, d, ss, n, ni, nl = case
    q = randn(gen, 1, T, Hkv * G, D, grad=False)
    kc = randn(gen, 1, ref.num_compressed_tokens(T, bs, d), Hkv, D, grad=False)
    _, lse = ref.compressed_attention(q, kc, kc, block_size=bs, stride=d)
    sizes = dict(block_size=bs, stride=d, select_size=ss, num_select=n, num_init=ni, num_local=nl)
    idx = kernels.select_blocks(q, kc, lse, **sizes)
    expected = ref.select_blocks(q, kc, lse, **sizes)
    assert idx.dtype == torch.int32 and idx.shape == expected.shape
    bad = (idx != expected).any(-1).nonzero()
    assert bad.numel() == 0, (f"seed {gen.initial_seed()}: {len(bad)} rows differ, first (b, t, h) = "
                              f"{bad[0].tolist()}: {idx[tuple(bad[0])].tolist()} vs {expected[tuple(bad[0])].tolist()}")


@pytest.mark.parametrize("case", [  # num_select > 8 (the product needs 16 blocks a tile)
    pytest.param((320, 1, 4, 16, 8, 4, 16, 9, 1, 2), id="aligned-G4"),  # 20 blocks: 2 tiles, a carry
    pytest.param((300, 2, 2, 16, 32, 16, 64, 16, 1, 2), id="paper-ratios"),  # one tile: no carry
    pytest.param((250, 1, 3, 32, 8, 4, 8, 10, 0, 1), id="l'/d=2-G3"),
    pytest.param((450, 1, 2, 16, 16, 8, 24, 11, 1, 2), id="l'/d=3"),  # 19 blocks: 2 tiles
])
@pytest.mark.parametrize("wdot", [1, 0], ids=["wdot", "head-sum-first"])
def test_select_blocks_wdot_matches_reference_exactly(gen, case, wdot, monkeypatch):
    """Both ways of the tile option wdot: each head's scores as a product with the overlap weights, then the head
    sum (1, shipped), or the head sum first, then the weights (0)."""
    set_tiles(monkeypatch, ["select"], wdot=wdot)
    test_select_blocks_matches_reference_exactly(gen, case, 0, monkeypatch)


def test_select_blocks_wdot_float32_differs_only_in_near_ties(gen, monkeypatch):
    """wdot with float32 inputs runs the product on float16 operands, as bf16 models do on the GPU: a row's chosen
    blocks may differ from the float64 reference's only where the reference scores them within 1e-3 of the row's
    best (the tolerance of test_kernels_gpu.py's bf16 selection test)."""
    set_tiles(monkeypatch, ["select"], wdot=1)
    T, Hkv, G, D, bs, d, ss, n = 400, 1, 16, 16, 8, 4, 16, 16  # the training model's 16 heads a group, 2 tiles
    q = randn(gen, 1, T, Hkv * G, D, dtype=torch.float32, grad=False) * 2
    kc = randn(gen, 1, ref.num_compressed_tokens(T, bs, d), Hkv, D, dtype=torch.float32, grad=False)
    _, lse = ref.compressed_attention(q, kc, kc, block_size=bs, stride=d)
    sizes = dict(block_size=bs, stride=d, select_size=ss)
    idx = kernels.select_blocks(q, kc, lse, num_select=n, **sizes)
    x64 = [x.double() for x in (q, kc, lse)]
    idx_r = ref.select_blocks(*x64, num_select=n, **sizes)
    score = ref.block_scores(*x64, **sizes)
    differ = (idx != idx_r).any(-1).nonzero().tolist()
    assert len(differ) <= 0.01 * T * Hkv, f"{len(differ)} rows differ (seed {gen.initial_seed()})"
    for b, t, h in differ:
        mine, theirs = set(idx[b, t, h].tolist()) - {-1}, set(idx_r[b, t, h].tolist()) - {-1}
        gap = max(score[b, t, h, j] for j in theirs - mine) - min(score[b, t, h, j] for j in mine - theirs)
        assert gap <= 1e-3 * score[b, t, h].max() + 1e-6, f"row (b={b}, t={t}, h={h}): gap {gap:.3g}"


def test_select_blocks_ties_go_to_lower_block_id(gen):
    # zero queries: every visible compressed token equally important, every block the same score
    T, ss = 40, 4
    q = torch.zeros(1, T, 2, 16, dtype=F64)
    kc = randn(gen, 1, T // ss, 1, 16, grad=False)
    _, lse = ref.compressed_attention(q, kc, kc, block_size=ss, stride=ss)
    idx = kernels.select_blocks(q, kc, lse, block_size=ss, stride=ss, select_size=ss, num_select=4)
    assert torch.equal(idx, ref.select_blocks(q, kc, lse, block_size=ss, stride=ss, select_size=ss, num_select=4))
    assert idx[0, T - 1, 0].tolist() == [0, 1, 8, 9]


# ----------------------------------------------------------------------------------------------
# selected attention

SELECTED_CASES = [  # B, T, Hkv, G, Dk, Dv, select_size, num_select
    pytest.param((1, 53, 2, 2, 16, 16, 8, 4), id="G2"),
    pytest.param((1, 37, 1, 16, 16, 8, 8, 4), id="G16-Dv<Dk"),
    pytest.param((2, 29, 1, 1, 16, 32, 16, 3), id="G1-Dv>Dk"),
    pytest.param((1, 70, 1, 4, 32, 16, 32, 3), id="G4-l'=32"),
]


SELECTED_VARIANTS = {  # variant -> (the kernels whose tiles change, the changes)
    "inverted-index": (["selected_dkdv"], dict(atomic=0, key_major=1)),  # its products key-major (as shipped)
    "atomic-dkdv": (["selected_dkdv"], dict(atomic=1)),  # dK/dV by float32 atomics from the dQ programs
    "row-major-dkdv": (["selected_dkdv"], dict(atomic=0, key_major=0)),  # the inverted index's products row-major
    # K/V through tensor descriptors in the one-position forward and dQ (packing off, so that they run at every G)
    "tma": (["selected_fwd", "selected_dq"], dict(tma=1, share=1, pack_below_g=0)),
    # the softmax row term delta in a pass of its own (row_delta), not in the one-position dQ kernel (fused_delta,
    # shipped)
    "separate-delta": (["selected_dq"], dict(fused_delta=0)),
}


@pytest.mark.parametrize("variant", list(SELECTED_VARIANTS))
@pytest.mark.parametrize("case", SELECTED_CASES)
def test_selected_attention(gen, case, variant, monkeypatch):
    """Outputs and gradients against the reference, with either dK/dV design (the inverted index, its products
    row-major or key-major (option `key_major`), or the "selected_dkdv" tiles' option `atomic`), and with the forward
    and dQ's TMA loads (option `tma`)."""
    names, changes = SELECTED_VARIANTS[variant]
    set_tiles(monkeypatch, names, **changes)
    B, T, Hkv, G, Dk, Dv, ss, n = case
    q, k, v = randn(gen, B, T, Hkv * G, Dk), randn(gen, B, T, Hkv, Dk), randn(gen, B, T, Hkv, Dv)
    # arbitrary ids: -1, repeats, ids past the query and past the sequence (all must select nothing extra)
    idx = torch.randint(-1, -(-T // ss) + 2, (B, T, Hkv, n), generator=gen, dtype=torch.int32)
    idx[..., 1] = idx[..., 0]
    o = kernels.selected_attention(q, k, v, idx, select_size=ss, scale=0.7)
    o_r = ref.selected_attention(q, k, v, idx, select_size=ss, scale=0.7)
    close([o], [o_r], "o", gen)
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    close(grads(o, (q, k, v), w), grads(o_r, (q, k, v), w), "d(q, k, v)", gen)


def test_selected_attention_positions_per_program():
    """Which kernel forward and dQ take: the tile's share, at least 16/G positions below pack_below_g heads per
    group, and an explicit share as given (1: the one-position kernel at every G)."""
    from kernels.triton_selected import positions_per_program

    fwd, dq = dict(share=1, pack_below_g=8), dict(share=1, pack_below_g=4)
    assert [positions_per_program(None, fwd, G) for G in (1, 2, 4, 8, 16, 32)] == [16, 8, 4, 1, 1, 1]
    assert [positions_per_program(None, dq, G) for G in (1, 2, 4, 8, 16)] == [16, 8, 1, 1, 1]
    assert positions_per_program(1, fwd, 1) == 1 and positions_per_program(4, fwd, 16) == 4
    assert positions_per_program(None, dict(share=4, pack_below_g=0), 2) == 8  # still >= 16 MMA rows
    assert positions_per_program(None, dict(share=1), 1) == 1  # tiles without the key never pack


@pytest.mark.parametrize("share", [1, 2, 4])
@pytest.mark.parametrize("case", SELECTED_CASES)
def test_selected_attention_shared_tiles(gen, case, share, monkeypatch):
    """The block-sharing kernels (P positions per program load the union of their blocks once) give the
    reference's output and dq; lse equals the one-position kernel's (dk/dv: the shared inverted-index kernel).
    share 1 asks for the one-position kernels at every G (the shipped tiles pack positions for small G).
    The sharing dQ and the one-position forward and dQ walk each block in 16-key steps here, so l' = 32 takes
    two."""
    from kernels.triton_selected import selected_backward, selected_forward

    set_tiles(monkeypatch, ["selected_dq"], ["small"], share_block_n=16)
    set_tiles(monkeypatch, ["selected_fwd", "selected_dq"], ["small"], block_n=16)

    B, T, Hkv, G, Dk, Dv, ss, n = case
    q, k, v = randn(gen, B, T, Hkv * G, Dk), randn(gen, B, T, Hkv, Dk), randn(gen, B, T, Hkv, Dv)
    idx = torch.randint(-1, -(-T // ss) + 2, (B, T, Hkv, n), generator=gen, dtype=torch.int32)
    idx[..., 1] = idx[..., 0]
    idx[:, 1::2] = idx[:, 0::2][:, : T // 2]  # neighbours with the same choices, as trained models make
    o, lse = selected_forward(q.detach(), k.detach(), v.detach(), idx, ss, 0.7, share=share)
    _, lse_one = selected_forward(q.detach(), k.detach(), v.detach(), idx, ss, 0.7, share=1)
    o_r = ref.selected_attention(q, k, v, idx, select_size=ss, scale=0.7)
    close([o, finite(lse)], [o_r, finite(lse_one)], "o, lse", gen)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_one))
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    dq, dk, dv = selected_backward(w, q.detach(), k.detach(), v.detach(), idx, o, lse, ss, 0.7, share=share)
    close([dq, dk, dv], grads(o_r, (q, k, v), w), "d(q, k, v)", gen)


def test_selected_attention_shared_tiles_through_the_op(gen, monkeypatch):
    """The public op (autograd included) takes the sharing kernels when the tile config asks for them."""
    set_tiles(monkeypatch, ["selected_fwd", "selected_dq"], ["small"], share=4)
    B, T, Hkv, G, D, ss, n = 1, 45, 1, 4, 16, 8, 3
    q, k, v = randn(gen, B, T, Hkv * G, D), randn(gen, B, T, Hkv, D), randn(gen, B, T, Hkv, D)
    idx = torch.randint(0, -(-T // ss), (B, T, Hkv, n), generator=gen, dtype=torch.int32)
    o = kernels.selected_attention(q, k, v, idx, select_size=ss)
    o_r = ref.selected_attention(q, k, v, idx, select_size=ss)
    close([o], [o_r], "o", gen)
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    close(grads(o, (q, k, v), w), grads(o_r, (q, k, v), w), "d(q, k, v)", gen)


def test_selected_attention_with_selected_blocks_and_no_valid_block(gen):
    # the real pipeline's idx (from select_blocks), plus rows whose every slot is -1 (zero output, zero grad)
    B, T, Hkv, G, D, bs, d, ss, n = 1, 60, 1, 4, 16, 8, 4, 16, 3
    q, k, v = randn(gen, B, T, Hkv * G, D), randn(gen, B, T, Hkv, D), randn(gen, B, T, Hkv, D)
    kc = randn(gen, B, ref.num_compressed_tokens(T, bs, d), Hkv, D, grad=False)
    _, lse = ref.compressed_attention(q.detach(), kc, kc, block_size=bs, stride=d)
    idx = kernels.select_blocks(q, kc, lse, block_size=bs, stride=d, select_size=ss, num_select=n)
    idx[:, 10:20] = -1
    o = kernels.selected_attention(q, k, v, idx, select_size=ss)
    o_r = ref.selected_attention(q, k, v, idx, select_size=ss)
    assert (o[:, 10:20] == 0).all()
    close([o], [o_r], "o", gen)
    w = torch.randn(o.shape, generator=gen, dtype=F64)
    g, g_r = grads(o, (q, k, v), w), grads(o_r, (q, k, v), w)
    assert (g[0][:, 10:20] == 0).all()
    close(g, g_r, "d(q, k, v)", gen)


# ----------------------------------------------------------------------------------------------
# window attention

WINDOW_CASES = [  # B, T, Hkv, G, Dk, Dv, window
    pytest.param((1, 53, 2, 2, 16, 16, 7), id="G2-w7"),
    pytest.param((1, 37, 1, 16, 16, 8, 1), id="G16-w1"),
    pytest.param((2, 45, 1, 1, 16, 32, 16), id="G1-w16"),
    pytest.param((1, 40, 1, 4, 32, 16, 100), id="G4-w>T"),
    pytest.param((1, 160, 1, 2, 16, 16, 70), id="G2-w70-T160"),  # whole key tiles inside the band
]


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_window_attention(gen, case):
    B, T, Hkv, G, Dk, Dv, w = case
    q, k, v = randn(gen, B, T, Hkv * G, Dk), randn(gen, B, T, Hkv, Dk), randn(gen, B, T, Hkv, Dv)
    o = kernels.window_attention(q, k, v, window=w)
    o_r = ref.window_attention(q, k, v, window=w)
    close([o], [o_r], "o", gen)
    wo = torch.randn(o.shape, generator=gen, dtype=F64)
    close(grads(o, (q, k, v), wo), grads(o_r, (q, k, v), wo), "d(q, k, v)", gen)


@pytest.mark.parametrize("cmp_case, window_case", [(CMP_CASES[i].values[0], WINDOW_CASES[i].values[0]) for i in (0, 1)])
def test_compressed_attention_separate_delta_and_window(gen, cmp_case, window_case, monkeypatch):
    """The banded backward with the softmax row term delta = rowsum(o * do) - dlse in a pass of its own (row_delta)
    instead of in its dQ kernel (the tiles' option fused_delta, shipped, which the tests above run): the
    compressed-attention checks above (gradients through o and through lse, i.e. with dlse), then window
    attention's."""
    set_tiles(monkeypatch, ["band_dq"], fused_delta=0)
    test_compressed_attention(gen, cmp_case)
    test_window_attention(gen, window_case)


@pytest.mark.parametrize("case", [CMP_CASES[0], CMP_CASES[2], CMP_CASES[5]])
def test_compressed_attention_tma_loads_and_window(gen, case, monkeypatch):
    """The banded forward and dQ reading K/V tiles through tensor descriptors (the tiles' option `tma`) equal the
    reference: compressed attention (K/V = the compressed tokens) and window attention on the same shapes."""
    set_tiles(monkeypatch, ["band_fwd", "band_dq"], tma=1)
    B, T, Hkv, G, Dk, Dv, bs, d = case
    Tc = ref.num_compressed_tokens(T, bs, d)
    q, kc, vc = randn(gen, B, T, Hkv * G, Dk), randn(gen, B, Tc, Hkv, Dk), randn(gen, B, Tc, Hkv, Dv)
    o, _ = kernels.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    o_r, _ = ref.compressed_attention(q, kc, vc, block_size=bs, stride=d)
    close([o], [o_r], "o", gen)
    wo = torch.randn(o.shape, generator=gen, dtype=F64)
    close(grads(o, (q, kc, vc), wo), grads(o_r, (q, kc, vc), wo), "d(q, k_cmp, v_cmp)", gen)
    k, v = randn(gen, B, T, Hkv, Dk), randn(gen, B, T, Hkv, Dv)
    o, o_r = kernels.window_attention(q, k, v, window=bs), ref.window_attention(q, k, v, window=bs)
    close([o], [o_r], "o (window)", gen)
    close(grads(o, (q, k, v), wo), grads(o_r, (q, k, v), wo), "d(q, k, v) (window)", gen)


# ----------------------------------------------------------------------------------------------
# float32, and torch.compile through the registered ops


def test_float32_inputs(gen):
    B, T, Hkv, G, D, bs, d, w = 1, 48, 1, 2, 16, 8, 4, 9
    q64, k64, v64 = randn(gen, B, T, Hkv * G, D), randn(gen, B, T, Hkv, D), randn(gen, B, T, Hkv, D)
    kc64 = randn(gen, B, ref.num_compressed_tokens(T, bs, d), Hkv, D)
    q, k, v, kc = (x.detach().float().requires_grad_() for x in (q64, k64, v64, kc64))
    tol = dict(atol=1e-5, rtol=1e-5)
    o, lse = kernels.compressed_attention(q, kc, kc, block_size=bs, stride=d)
    o_r, _ = ref.compressed_attention(q64, kc64, kc64, block_size=bs, stride=d)
    assert o.dtype == torch.float32
    close([o], [o_r], "compressed o", gen, **tol)
    wo = torch.randn(o.shape, generator=gen, dtype=F64)
    close(grads(o, (q, kc), wo.float()), grads(o_r, (q64, kc64), wo), "compressed grads", gen, **tol)
    o, o_r = kernels.window_attention(q, k, v, window=w), ref.window_attention(q64, k64, v64, window=w)
    close([o], [o_r], "window o", gen, **tol)
    close(grads(o, (q, k, v), wo.float()), grads(o_r, (q64, k64, v64), wo), "window grads", gen, **tol)


def test_torch_compile_fullgraph_through_all_ops(gen):
    B, T, Hkv, G, D, bs, d, ss, n, w = 1, 64, 1, 2, 16, 8, 4, 16, 3, 12
    q, k, v = randn(gen, B, T, Hkv * G, D), randn(gen, B, T, Hkv, D), randn(gen, B, T, Hkv, D)
    kc = randn(gen, B, ref.num_compressed_tokens(T, bs, d), Hkv, D)

    def nsa(m, q, k, v, kc):
        o_cmp, lse = m.compressed_attention(q, kc, kc, block_size=bs, stride=d)
        idx = m.select_blocks(q, kc, lse, block_size=bs, stride=d, select_size=ss, num_select=n)
        o = o_cmp + m.selected_attention(q, k, v, idx, select_size=ss) + m.window_attention(q, k, v, window=w)
        return o, idx

    compiled = torch.compile(lambda *a: nsa(kernels, *a), fullgraph=True, backend="aot_eager")
    o, idx = compiled(q, k, v, kc)
    o_r, idx_r = nsa(ref, q, k, v, kc)
    assert torch.equal(idx, idx_r), f"seed {gen.initial_seed()}"
    close([o], [o_r], "o", gen)
    wo = torch.randn(o.shape, generator=gen, dtype=F64)
    close(grads(o, (q, k, v, kc), wo), grads(o_r, (q, k, v, kc), wo), "d(q, k, v, k_cmp)", gen)
