"""NSA's Triton decode kernels (kernels/triton_decode.py) under Triton's CPU interpreter, against the reference.

Not collected by a plain `pytest` run: Triton reads TRITON_INTERPRET when it is imported, so
tests/test_kernels_decode.py runs these cases in a child process that set it first:

    TRITON_INTERPRET=1 python -m pytest tests/_triton_decode_cases.py

One decoding step is q [B, 1, Hq, D] at position q_start against keys 0 .. q_start. Every case draws fresh
random float64 inputs (the seed is in the failure message) and compares with kernels/reference.py: outputs to
1e-9, lse to float32 precision, selected blocks exactly. The cases cover G = 1, 2, 3, 4, 16, Dv != Dk, B > 1,
positions before the first compressed token and on/after block boundaries, one split and several (each case
says which, and checks it through the launch plan), both ways of combining the splits, and GPT.generate with
the decode kernels against greedy decoding by full forwards.
"""

from __future__ import annotations

import os
import random

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("run this module with TRITON_INTERPRET=1 set (tests/test_kernels_decode.py does that)")

import pytest  # noqa: E402
import torch  # noqa: E402

import kernels  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels import triton_decode as td  # noqa: E402
from kernels.triton_common import tiles_set  # noqa: E402

F64 = torch.float64
CPU = torch.device("cpu")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))


def randn(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


def close(actual, expected, what, gen, atol=1e-9, rtol=1e-9):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (seed {gen.initial_seed()})"
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol,
                               msg=lambda m: f"{what} (seed {gen.initial_seed()}): {m}")


def finite(lse):
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def close_compressed(o, lse, o_r, lse_r, gen, where=""):
    """Compressed attention's o to 1e-9 and its lse (float32) to 1e-6 of the reference, -inf where the reference's."""
    close(o, o_r, f"o{where}", gen)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_r)), f"lse{where}: seed {gen.initial_seed()}"
    close(finite(lse), finite(lse_r), f"lse{where}", gen, atol=1e-6, rtol=1e-6)


def split_cfg(many: bool) -> dict:
    """Tile overrides: many splits (small ones) or a single split."""
    return dict(split_factor=8.0, max_splits=8) if many else dict(split_factor=0.0)


class Launches:
    """Counts the launches of the named decode kernels: each is replaced (monkeypatch) by a stand-in that counts a
    launch, then makes it."""

    def __init__(self, monkeypatch, *names: str):
        self.counts = dict.fromkeys(names, 0)
        for name in names:
            monkeypatch.setattr(td, name, _Counted(self.counts, name, getattr(td, name)))


class _Counted:
    def __init__(self, counts: dict, name: str, kernel):
        self.counts, self.name, self.kernel = counts, name, kernel

    def __getitem__(self, grid):
        self.counts[self.name] += 1
        return self.kernel[grid]


# ----------------------------------------------------------------------------------------------
# dispatch


def test_dispatch_sends_one_step_to_the_decode_kernels():
    q1, q2 = torch.zeros(1, 1, 2, 16), torch.zeros(1, 2, 2, 16)
    for name in ("compressed_attention", "select_blocks", "selected_attention", "window_attention"):
        fn = kernels._impl(name, q1, 7)
        assert fn.func is td.TRITON_DECODE_OPS[name] and fn.keywords == {"q_start": 7}, name
        assert kernels._impl(name, q1).func is td.TRITON_DECODE_OPS[name], name
        assert getattr(kernels._impl(name, q2, 7), "func", None) is not td.TRITON_DECODE_OPS[name], name


def test_dispatch_decode_with_gradients_runs_the_pytorch_path(gen):
    """The decode kernels have no backward: a step that needs gradients gets the (differentiable) chunked path."""
    B, S, Hkv, G, D, w = 1, 20, 1, 2, 16, 6
    q, k, v = (randn(gen, B, n, H, D).requires_grad_() for n, H in ((1, Hkv * G), (S, Hkv), (S, Hkv)))
    o = kernels.window_attention(q, k, v, window=w, q_start=S - 1)
    o_r = ref.window_attention(q, k, v, window=w, q_start=S - 1)
    close(o, o_r, "o", gen)
    wo = torch.randn(o.shape, generator=gen, dtype=F64)
    for a, e in zip(torch.autograd.grad((o * wo).sum(), (q, k, v)), torch.autograd.grad((o_r * wo).sum(), (q, k, v))):
        close(a, e, "grad", gen)


def test_dispatch_pdl_stays_off_where_the_device_lacks_it(gen):
    """The tiles' pdl launches with programmatic dependent launch only on CUDA devices of compute capability >= 9:
    here (interpreter, CPU tensors) a step with it asked for by every tile launches without it (the interpreter
    cannot run its wait) and equals the reference."""
    assert td._pdl({"pdl": True}, CPU) == {"PDL": False, "launch_pdl": False}
    B, Hkv, G, D, S, w = 1, 1, 2, 16, 91, 16
    q, k, v = (randn(gen, B, n, H, D) for n, H in ((1, Hkv * G), (S, Hkv), (S, Hkv)))
    with tiles_set(*td.INTERPRETER_TILES.values(), pdl=True):
        o = kernels.window_attention(q, k, v, window=w, q_start=S - 1)
    close(o, ref.window_attention(q, k, v, window=w, q_start=S - 1), "o", gen)


# ----------------------------------------------------------------------------------------------
# compressed attention (o and lse)

CMP_CASES = [  # B, Hkv, G, Dk, Dv, block_size, stride, q_start, many splits
    pytest.param((2, 2, 4, 16, 8, 8, 4, 100, True), id="G4-Dv<Dk-B2-split"),
    pytest.param((1, 1, 16, 16, 32, 16, 8, 190, True), id="G16-Dv>Dk-split"),
    pytest.param((1, 3, 1, 32, 16, 4, 4, 57, False), id="G1-l=d-one-split"),
    pytest.param((2, 1, 3, 16, 16, 8, 4, 7, True), id="first-compressed-token"),
    pytest.param((1, 2, 2, 16, 16, 8, 4, 5, False), id="no-compressed-token-yet"),
]


@pytest.mark.parametrize("combine", td.COMBINE_MODES)
@pytest.mark.parametrize("case", CMP_CASES)
def test_compressed_attention_decode(gen, case, combine):
    B, Hkv, G, Dk, Dv, bs, d, t, many = case
    Tc = ref.num_compressed_tokens(t + 1, bs, d)
    q, kc, vc = randn(gen, B, 1, Hkv * G, Dk), randn(gen, B, Tc, Hkv, Dk), randn(gen, B, Tc, Hkv, Dv)
    cfg = split_cfg(many)
    plan = td.attn_plan(Tc, B * Hkv, Dk, Dv, G, F64, CPU, cfg)
    assert (plan["splits"] > 1) == (many and Tc > 16), plan
    o, lse = td.compressed_attention(q, kc, vc, block_size=bs, stride=d, q_start=t, cfg=cfg, combine=combine)
    o_r, lse_r = ref.compressed_attention(q, kc, vc, block_size=bs, stride=d, q_start=t)
    assert o.dtype == F64 and lse.dtype == torch.float32
    close_compressed(o, lse, o_r, lse_r, gen)


# ----------------------------------------------------------------------------------------------
# block selection (exact)

SELECT_CASES = [  # B, Hkv, G, D, block_size, stride, select_size, num_select, num_init, num_local, q_start, cfg
    pytest.param((2, 2, 2, 16, 8, 4, 16, 5, 1, 2, 150, dict(max_splits=8)), id="G2-B2-splits"),
    pytest.param((1, 1, 4, 16, 32, 16, 64, 4, 1, 2, 700, dict(max_splits=3)), id="paper-ratios-multi-tile"),
    pytest.param((1, 2, 1, 16, 4, 2, 8, 6, 2, 1, 95, dict(max_splits=8)), id="G1-init2-local1"),
    pytest.param((1, 1, 2, 16, 8, 8, 8, 3, 0, 0, 70, dict(max_splits=8)), id="pure-top-k-l=d"),
    pytest.param((1, 1, 16, 16, 8, 4, 16, 5, 1, 2, 130, dict(max_splits=1)), id="G16-one-split-multi-tile"),
    pytest.param((1, 1, 3, 32, 16, 8, 48, 7, 1, 2, 400, dict(max_splits=8)), id="G3-l'=48"),
    pytest.param((2, 2, 2, 16, 8, 4, 16, 3, 1, 2, 5, dict(max_splits=8)), id="before-the-first-token"),
    pytest.param((1, 1, 2, 16, 8, 4, 16, 8, 1, 2, 47, dict(max_splits=8)), id="fewer-blocks-than-n"),
]


@pytest.mark.parametrize("combine", td.COMBINE_MODES)
@pytest.mark.parametrize("case", SELECT_CASES)
def test_select_blocks_decode_matches_reference_exactly(gen, case, combine):
    B, Hkv, G, D, bs, d, ss, n, ni, nl, t, cfg = case
    Tc = ref.num_compressed_tokens(t + 1, bs, d)
    q, kc = randn(gen, B, 1, Hkv * G, D), randn(gen, B, Tc, Hkv, D)
    _, lse = ref.compressed_attention(q, kc, kc, block_size=bs, stride=d, q_start=t)
    kw = dict(block_size=bs, stride=d, select_size=ss, num_select=n, num_init=ni, num_local=nl, q_start=t)
    idx = td.select_blocks(q, kc, lse, **kw, cfg=cfg, combine=combine)
    idx_r = ref.select_blocks(q, kc, lse, **kw)
    assert idx.dtype == torch.int32
    assert torch.equal(idx, idx_r), f"seed {gen.initial_seed()}\n{idx}\n{idx_r}"


def test_select_plans_cover_one_and_several_splits_and_tiles():
    """The cases above run the paths they name: several splits, several tiles per split, a single program."""
    def plan(t, bs, d, ss, n, cfg):
        return td.select_plan(t, block_size=bs, stride=d, select_size=ss, num_select=n, cfg=cfg)
    assert plan(150, 8, 4, 16, 5, dict(max_splits=8))["splits"] > 1
    p = plan(700, 32, 16, 64, 4, dict(max_splits=3))
    assert p["splits"] > 1 and p["tiles_per_split"] > 1
    p = plan(130, 8, 4, 16, 5, dict(max_splits=1))
    assert p["splits"] == 1 and p["tiles_per_split"] > 1


@pytest.mark.parametrize("kind", ["select", "attn"])
def test_combine_mode_of_calls_without_one_is_the_tiles_entry(gen, kind, monkeypatch):
    """Without a combine argument, each kernel combines its splits as its tiles say (DECODE_TILES' `combine`, per
    kernel, so that the selection's merge can go into its own launch while the attention ops keep theirs): "fused"
    launches no combine kernel and still equals the reference; "kernel" launches it; anything else is refused."""
    B, Hkv, G, D, bs, d, ss, n, t = 1, 2, 4, 16, 8, 4, 16, 5, 150
    Tc = ref.num_compressed_tokens(t + 1, bs, d)
    q, kc = randn(gen, B, 1, Hkv * G, D), randn(gen, B, Tc, Hkv, D)
    kw = dict(block_size=bs, stride=d, q_start=t)
    o_r, lse_r = ref.compressed_attention(q, kc, kc, **kw)
    sel = dict(select_size=ss, num_select=n)
    idx_r = ref.select_blocks(q, kc, lse_r, **kw, **sel)
    combine_kernel = "_select_merge_kernel" if kind == "select" else "_attn_combine_kernel"
    launches = Launches(monkeypatch, combine_kernel).counts
    many = dict(max_splits=8) if kind == "select" else split_cfg(True)

    def run():
        if kind == "select":
            idx = td.select_blocks(q, kc, lse_r, **kw, **sel, cfg=many)
            assert torch.equal(idx, idx_r), f"seed {gen.initial_seed()}\n{idx}\n{idx_r}"
        else:
            o, lse = td.compressed_attention(q, kc, kc, **kw, cfg=many)
            close(o, o_r, "o", gen)
            close(finite(lse), finite(lse_r).float(), "lse", gen, atol=1e-5, rtol=1e-5)
    for mode, launched in (("fused", 0), ("kernel", 1)):
        launches[combine_kernel] = 0
        monkeypatch.setitem(td.INTERPRETER_TILES[kind], "combine", mode)
        run()
        assert launches[combine_kernel] == launched, f"combine={mode}: {launches[combine_kernel]} combine launches"
    monkeypatch.setitem(td.INTERPRETER_TILES[kind], "combine", "later")
    with pytest.raises(ValueError, match="combine='later'"):
        run()


# ----------------------------------------------------------------------------------------------
# compressed attention and block selection in one call (the selection reading compressed attention's scores)

CMP_SELECT_CASES = [  # B, Hkv, G, Dk, Dv, block_size, stride, select_size, n, num_init, num_local, q_start,
    # compressed attention in several splits, selection tiles
    pytest.param((2, 2, 4, 16, 8, 8, 4, 16, 5, 1, 2, 150, True, dict(max_splits=8)), id="G4-B2-Dv<Dk-splits"),
    pytest.param((1, 1, 16, 16, 32, 32, 16, 64, 4, 1, 2, 700, True, dict(max_splits=3)),
                 id="G16-paper-ratios-multi-tile"),
    pytest.param((1, 3, 1, 32, 16, 4, 4, 8, 6, 2, 1, 95, False, dict(max_splits=8)), id="G1-one-attention-split"),
    pytest.param((1, 1, 3, 16, 16, 8, 4, 16, 8, 0, 0, 260, True, dict(max_splits=1)),
                 id="pure-top-k-one-select-split"),
    pytest.param((2, 2, 2, 16, 16, 8, 4, 16, 3, 1, 2, 5, True, dict(max_splits=8)), id="before-the-first-token"),
]


@pytest.mark.parametrize("combine", td.COMBINE_MODES)
@pytest.mark.parametrize("case", CMP_SELECT_CASES)
def test_compressed_and_select_from_the_attention_scores(gen, case, combine, monkeypatch):
    """scores_from="attention": compressed attention stores its scores and the selection reads them, its splits in
    the launch of compressed attention's combine when there is one (else alone, reading the stored lse). o and lse
    equal the reference; idx equals the reference selection on that lse, exactly; and the step takes the two
    launches this path promises (when compressed attention splits, no combine launch of its own)."""
    B, Hkv, G, Dk, Dv, bs, d, ss, n, ni, nl, t, many, sel_cfg = case
    Tc = ref.num_compressed_tokens(t + 1, bs, d)
    q, kc, vc = randn(gen, B, 1, Hkv * G, Dk), randn(gen, B, Tc, Hkv, Dk), randn(gen, B, Tc, Hkv, Dv)
    cfg = split_cfg(many)
    cmp_split = td.attn_plan(Tc, B * Hkv, Dk, Dv, G, F64, CPU, cfg)["splits"] > 1
    assert cmp_split == (many and Tc > 16), Tc
    launches = Launches(monkeypatch, "_decode_attn_kernel", "_select_decode_kernel", "_attn_combine_kernel")
    kw = dict(block_size=bs, stride=d, select_size=ss, num_select=n, num_init=ni, num_local=nl, q_start=t)
    o, lse, idx = td.compressed_attention_and_select(q, kc, vc, **kw, cfg=cfg, combine=combine,
                                                     select_cfg=dict(sel_cfg, scores_from="attention"))
    # two launches: compressed attention's combine, where it has one outside its own launch, runs in the
    # selection's (o below would be wrong without it)
    assert launches.counts == {"_decode_attn_kernel": 1, "_select_decode_kernel": 1, "_attn_combine_kernel": 0}, (
        launches.counts)
    close_compressed(o, lse, *ref.compressed_attention(q, kc, vc, block_size=bs, stride=d, q_start=t), gen)
    idx_r = ref.select_blocks(q, kc, lse, **kw)
    assert torch.equal(idx, idx_r), f"seed {gen.initial_seed()}\n{idx}\n{idx_r}"


def test_compressed_and_select_by_keys_is_the_two_ops(gen, monkeypatch):
    """scores_from="keys" runs compressed attention, its combine, then the selection scoring the compressed keys, and
    gives the same as "attention"; an unknown scores_from is refused."""
    B, Hkv, G, D, bs, d, ss, n, t = 1, 2, 4, 16, 8, 4, 16, 5, 150
    Tc = ref.num_compressed_tokens(t + 1, bs, d)
    q, kc, vc = randn(gen, B, 1, Hkv * G, D), randn(gen, B, Tc, Hkv, D), randn(gen, B, Tc, Hkv, D)
    kw = dict(block_size=bs, stride=d, select_size=ss, num_select=n, q_start=t, cfg=split_cfg(True))
    launches = Launches(monkeypatch, "_select_decode_kernel", "_attn_combine_kernel")
    by_keys = td.compressed_attention_and_select(q, kc, vc, **kw, select_cfg=dict(scores_from="keys"))
    assert launches.counts == {"_select_decode_kernel": 1, "_attn_combine_kernel": 1}
    by_scores = td.compressed_attention_and_select(q, kc, vc, **kw, select_cfg=dict(scores_from="attention"))
    for a, e, what in zip(by_scores, by_keys, ("o", "lse", "idx")):
        assert torch.equal(a, e), f"{what}: seed {gen.initial_seed()}"
    with pytest.raises(ValueError, match="scores_from='both'"):
        td.compressed_attention_and_select(q, kc, vc, **kw, select_cfg=dict(scores_from="both"))


# ----------------------------------------------------------------------------------------------
# selected and window attention

SLC_CASES = [  # B, Hkv, G, Dk, Dv, select_size, num_select, q_start, many splits
    pytest.param((2, 2, 2, 16, 8, 16, 5, 120, True), id="G2-B2-Dv<Dk-split"),
    pytest.param((1, 1, 16, 16, 32, 8, 6, 63, True), id="G16-Dv>Dk-l'<16-split"),
    pytest.param((1, 3, 1, 32, 16, 24, 3, 50, False), id="G1-l'=24-one-split"),
    pytest.param((1, 1, 4, 16, 16, 16, 4, 0, True), id="first-position"),
]


@pytest.mark.parametrize("combine", td.COMBINE_MODES)
@pytest.mark.parametrize("case", SLC_CASES)
def test_selected_attention_decode(gen, case, combine):
    """Ids: random visible blocks, plus -1, repeats and blocks past the position (all select nothing extra)."""
    B, Hkv, G, Dk, Dv, ss, n, t, many = case
    S = t + 1
    q, k, v = randn(gen, B, 1, Hkv * G, Dk), randn(gen, B, S, Hkv, Dk), randn(gen, B, S, Hkv, Dv)
    cur = t // ss
    idx = torch.randint(-1, cur + 3, (B, 1, Hkv, n), generator=gen)
    idx[..., 0] = cur  # the block holding t (its keys s <= t only)
    idx[..., -1] = idx[..., 1]  # a repeat
    cfg = split_cfg(many)
    assert (td.attn_plan(n, B * Hkv, Dk, Dv, G, F64, CPU, cfg, select_size=ss)["splits"] > 1) == many
    for ids in (idx.to(torch.int32), idx):  # int64 ids work too
        o = td.selected_attention(q, k, v, ids, select_size=ss, q_start=t, cfg=cfg, combine=combine)
        close(o, ref.selected_attention(q, k, v, ids, select_size=ss, q_start=t), "o", gen)


WIN_CASES = [  # B, Hkv, G, Dk, Dv, window, q_start, many splits
    pytest.param((2, 2, 2, 16, 8, 40, 97, True), id="G2-B2-Dv<Dk-split"),
    pytest.param((1, 1, 16, 16, 32, 64, 30, True), id="G16-window-past-the-start"),
    pytest.param((1, 3, 1, 32, 16, 9, 60, False), id="G1-one-split"),
    pytest.param((1, 1, 4, 16, 16, 1, 12, False), id="window-1"),
]


@pytest.mark.parametrize("combine", td.COMBINE_MODES)
@pytest.mark.parametrize("case", WIN_CASES)
def test_window_attention_decode(gen, case, combine):
    B, Hkv, G, Dk, Dv, w, t, many = case
    S = t + 1
    q, k, v = randn(gen, B, 1, Hkv * G, Dk), randn(gen, B, S, Hkv, Dk), randn(gen, B, S, Hkv, Dv)
    cfg = split_cfg(many)
    assert (td.attn_plan(min(w, S), B * Hkv, Dk, Dv, G, F64, CPU, cfg)["splits"] > 1) == many
    o = td.window_attention(q, k, v, window=w, q_start=t, cfg=cfg, combine=combine)
    close(o, ref.window_attention(q, k, v, window=w, q_start=t), "o", gen)


PAIR_CASES = [  # B, Hkv, G, Dk, Dv, select_size, num_select, window, q_start, many splits
    pytest.param((2, 2, 2, 16, 8, 16, 5, 40, 120, True), id="G2-B2-Dv<Dk-split"),
    pytest.param((1, 1, 16, 16, 32, 8, 6, 24, 63, True), id="G16-Dv>Dk-split"),
    pytest.param((1, 3, 1, 32, 16, 24, 3, 9, 50, False), id="G1-one-split"),
    pytest.param((1, 1, 4, 16, 16, 16, 4, 64, 0, True), id="first-position"),
]


@pytest.mark.parametrize("combine", td.COMBINE_MODES)
@pytest.mark.parametrize("case", PAIR_CASES)
def test_selected_and_window_decode_in_one_launch(gen, case, combine):
    """The pair kernel (selected and window attention in one launch, each with its own splits, partial states
    and counters) gives both branches' reference outputs."""
    B, Hkv, G, Dk, Dv, ss, n, w, t, many = case
    S = t + 1
    q = randn(gen, B, 1, Hkv * G, Dk)
    ks, vs, kw, vw = (randn(gen, B, S, Hkv, d) for d in (Dk, Dv, Dk, Dv))
    idx = torch.randint(-1, t // ss + 3, (B, 1, Hkv, n), generator=gen)
    idx[..., 0] = t // ss
    idx[..., -1] = idx[..., 1]
    cfg = split_cfg(many)
    assert (td.attn_plan(n, B * Hkv, Dk, Dv, G, F64, CPU, cfg, select_size=ss)["splits"] > 1) == many
    o_slc, o_win = td.selected_and_window_attention(q, ks, vs, idx, kw, vw, select_size=ss, window=w, q_start=t,
                                                     cfg=cfg, combine=combine)
    close(o_slc, ref.selected_attention(q, ks, vs, idx, select_size=ss, q_start=t), "o_slc", gen)
    close(o_win, ref.window_attention(q, kw, vw, window=w, q_start=t), "o_win", gen)


@pytest.mark.parametrize("G", [2, 16])
def test_decode_step_at_a_device_position_equals_the_reference(gen, G):
    """The *_at ops (position in a device tensor, whole cache buffers, split plans sized for max_pos: what a
    CUDA-graph decoding step needs) at positions before the first compressed token, on and after block
    boundaries and at max_pos, against the reference on the visible part of the cache; compressed attention and
    the selection also in one call with scores_from="attention"."""
    B, Hkv, D, bs, d, ss, n, w, M = 2, 2, 16, 8, 4, 16, 5, 24, 150
    q = randn(gen, B, 1, Hkv * G, D)
    kc = randn(gen, B, ref.num_compressed_tokens(M, bs, d), Hkv, D)
    vc = randn(gen, *kc.shape)
    ks, vs, kw, vw = (randn(gen, B, M, Hkv, D) for _ in range(4))
    cfg = split_cfg(True)
    for t in (0, 5, 6, 7, 11, 31, 32, 100, M - 1):
        pos = torch.tensor([t], dtype=torch.int32)
        nc = ref.num_compressed_tokens(t + 1, bs, d)
        o, lse = td.compressed_attention_at(q, kc, vc, pos, block_size=bs, stride=d, max_pos=M - 1, cfg=cfg)
        o_r, lse_r = ref.compressed_attention(q, kc[:, :nc], vc[:, :nc], block_size=bs, stride=d, q_start=t)
        close_compressed(o, lse, o_r, lse_r, gen, f" at {t}")
        for forced in (dict(num_init=1, num_local=2), dict(num_init=0, num_local=0)):  # no forced blocks: the
            sizes = dict(block_size=bs, stride=d, select_size=ss, num_select=n, **forced)  # newest tokens count
            idx = td.select_blocks_at(q, kc, lse_r, pos, **sizes, max_pos=M - 1, cfg=dict(max_splits=8))
            idx_r = ref.select_blocks(q, kc[:, :nc], lse_r, **sizes, q_start=t)
            assert torch.equal(idx, idx_r), f"t={t} {forced} seed {gen.initial_seed()}\n{idx}\n{idx_r}"
            o2, lse2, idx2 = td.compressed_attention_and_select_at(
                q, kc, vc, pos, **sizes, max_pos=M - 1, cfg=cfg, select_cfg=dict(max_splits=8, scores_from="attention"))
            close(o2, o_r, f"o_cmp at {t}, scores_from=attention", gen)
            assert torch.equal(lse2, lse), f"t={t} seed {gen.initial_seed()}"
            idx2_r = ref.select_blocks(q, kc[:, :nc], lse2, **sizes, q_start=t)
            assert torch.equal(idx2, idx2_r), f"t={t} {forced} seed {gen.initial_seed()}\n{idx2}\n{idx2_r}"
        o_s, o_w = td.selected_and_window_attention_at(q, ks, vs, idx_r, kw, vw, pos, select_size=ss, window=w,
                                                        max_pos=M - 1, cfg=cfg)
        k_vis = [x[:, :t + 1] for x in (ks, vs, kw, vw)]
        close(o_s, ref.selected_attention(q, *k_vis[:2], idx_r, select_size=ss, q_start=t), f"o_slc at {t}", gen)
        close(o_w, ref.window_attention(q, *k_vis[2:], window=w, q_start=t), f"o_win at {t}", gen)
    with pytest.raises(ValueError, match="compressed_attention_at: the position must be a one-element int32"):
        td.compressed_attention_at(q, kc, vc, torch.tensor([1.0]), block_size=bs, stride=d, max_pos=M - 1)
    with pytest.raises(ValueError, match="the key cache has 150 rows but max_pos needs 151"):
        td.selected_and_window_attention_at(q, ks, vs, idx_r, kw, vw, pos, select_size=ss, window=w, max_pos=M)
    with pytest.raises(ValueError, match="select_blocks_at: k_cmp has 10 rows but max_pos needs 36"):
        td.select_blocks_at(q, kc[:, :10], lse_r, pos, block_size=bs, stride=d, select_size=ss, num_select=n,
                            max_pos=M - 1)
    with pytest.raises(ValueError, match="compressed_attention_and_select_at: k_cmp has 10 rows but max_pos needs 36"):
        td.compressed_attention_and_select_at(q, kc[:, :10], vc[:, :10], pos, block_size=bs, stride=d,
                                              select_size=ss, num_select=n, max_pos=M - 1,
                                              select_cfg=dict(scores_from="attention"))


@pytest.mark.parametrize("combine", td.COMBINE_MODES)
def test_combine_of_a_split_count_that_is_not_a_power_of_two(gen, combine):
    """The combine loads every split's state as one padded tile: 3 splits (padded to 4) must give the reference,
    with and without lse (the compressed op writes it)."""
    B, Hkv, G, D, w, t = 2, 1, 4, 16, 40, 150
    q, k, v = randn(gen, B, 1, Hkv * G, D), randn(gen, B, t + 1, Hkv, D), randn(gen, B, t + 1, Hkv, D)
    cfg = dict(split_factor=8.0, max_splits=3)
    assert td.attn_plan(w, B * Hkv, D, D, G, F64, CPU, cfg)["splits"] == 3
    o = td.window_attention(q, k, v, window=w, q_start=t, cfg=cfg, combine=combine)
    close(o, ref.window_attention(q, k, v, window=w, q_start=t), "o", gen)
    bs, d = 8, 4
    Tc = ref.num_compressed_tokens(t + 1, bs, d)
    kc, vc = randn(gen, B, Tc, Hkv, D), randn(gen, B, Tc, Hkv, D)
    assert td.attn_plan(kc.shape[1], B * Hkv, D, D, G, F64, CPU, cfg)["splits"] == 3
    o, lse = td.compressed_attention(q, kc, vc, block_size=bs, stride=d, q_start=t, cfg=cfg, combine=combine)
    o_r, lse_r = ref.compressed_attention(q, kc, vc, block_size=bs, stride=d, q_start=t)
    close(o, o_r, "compressed o", gen)
    close(lse, lse_r.to(lse.dtype), "lse", gen)


# ----------------------------------------------------------------------------------------------
# the public ops in float32 on strided cache views, and generation


def test_public_ops_float32_on_cache_views(gen):
    """Through kernels.* (default tiles): float32 inputs that are slices of larger preallocated caches."""
    B, Hkv, G, D, bs, d, ss, n, w, t = 2, 2, 2, 16, 8, 4, 16, 4, 24, 77
    S, Tc = t + 1, ref.num_compressed_tokens(t + 1, bs, d)
    q = randn(gen, B, 1, Hkv * G, D, dtype=torch.float32)
    k_all, v_all = randn(gen, B, S + 9, Hkv, D, dtype=torch.float32), randn(gen, B, S + 9, Hkv, D, dtype=torch.float32)
    kc_all = randn(gen, B, Tc + 3, Hkv, D, dtype=torch.float32)
    k, v, kc = k_all[:, :S], v_all[:, :S], kc_all[:, :Tc]
    q64, k64, v64, kc64 = (x.double() for x in (q, k, v, kc))
    tol = dict(atol=1e-5, rtol=1e-5)
    o, lse = kernels.compressed_attention(q, kc, kc, block_size=bs, stride=d, q_start=t)
    o_r, lse_r = ref.compressed_attention(q64, kc64, kc64, block_size=bs, stride=d, q_start=t)
    close(o, o_r, "compressed o", gen, **tol)
    close(lse, lse_r.double(), "lse", gen, **tol)
    kw = dict(block_size=bs, stride=d, select_size=ss, num_select=n, q_start=t)
    idx = kernels.select_blocks(q, kc, lse, **kw)
    assert torch.equal(idx, ref.select_blocks(q, kc, lse, **kw)), f"seed {gen.initial_seed()}"
    for scores_from in td.SCORES_FROM:
        with tiles_set(td.INTERPRETER_TILES["select"], scores_from=scores_from):
            o2, lse2, idx2 = kernels.compressed_attention_and_select(q, kc, kc, **kw)
        close(o2, o_r, f"compressed o, {scores_from}", gen, **tol)
        close(lse2, lse_r.double(), f"lse, {scores_from}", gen, **tol)
        assert torch.equal(idx2, ref.select_blocks(q, kc, lse2, **kw)), f"{scores_from}: seed {gen.initial_seed()}"
    close(kernels.selected_attention(q, k, v, idx, select_size=ss, q_start=t),
          ref.selected_attention(q64, k64, v64, idx, select_size=ss, q_start=t), "selected o", gen, **tol)
    close(kernels.window_attention(q, k, v, window=w, q_start=t),
          ref.window_attention(q64, k64, v64, window=w, q_start=t), "window o", gen, **tol)
    o_slc, o_win = kernels.selected_and_window_attention(q, k, v, idx, k, v, select_size=ss, window=w, q_start=t)
    close(o_slc, ref.selected_attention(q64, k64, v64, idx, select_size=ss, q_start=t), "pair: selected o", gen,
          **tol)
    close(o_win, ref.window_attention(q64, k64, v64, window=w, q_start=t), "pair: window o", gen, **tol)


def small_nsa_model():
    """(model, prompt [2, 6], seed): a float64 2-layer NSA GPT with l=4, d=2, l'=4, n=4, w=8 on fresh weights."""
    from model import GPT, AttentionConfig, ModelConfig

    seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=100, max_seq_len=64)
    attn = AttentionConfig(name="nsa", compress_block=4, compress_stride=2, select_block=4, num_select=4, window=8)
    return GPT(cfg, attn).double().eval(), torch.randint(0, 100, (2, 6)), seed


@pytest.mark.parametrize("scores_from", td.SCORES_FROM)
def test_generate_with_decode_kernels_equals_greedy_full_forwards(monkeypatch, scores_from):
    """GPT.generate (prefill, then one token at a time through the decode kernels) == greedy decoding by a full
    forward, float64, G = 2, l=4, d=2, l'=4, n=4, w=8: the 13 one-token steps cross every block rule, and the last
    ones choose blocks by score (5 visible blocks for 4 slots). The full forward (T > 1) runs the chunked
    PyTorch path here (TRITON_OPS emptied), which is fast and equal to the reference; its logits at t are those
    of a forward over tokens 0..t (causality), so one forward checks every greedy step. Both ways of scoring
    the selection (the selection tiles' scores_from)."""
    monkeypatch.setitem(td.INTERPRETER_TILES["select"], "scores_from", scores_from)
    calls = {name: 0 for name in td.TRITON_DECODE_OPS}
    for name, fn in list(kernels.TRITON_DECODE_OPS.items()):
        def counted(*a, _fn=fn, _name=name, **kw):
            calls[_name] += 1
            return _fn(*a, **kw)
        monkeypatch.setitem(kernels.TRITON_DECODE_OPS, name, counted)
    monkeypatch.setattr(kernels, "TRITON_OPS", {})
    model, prompt, seed = small_nsa_model()
    out = model.generate(prompt, max_new_tokens=14)
    # 2 layers x 13 one-token steps, each through the two ops that chain two (kernels/__init__.py)
    pairs = ("compressed_attention_and_select", "selected_and_window_attention")
    assert calls == {name: 2 * 13 if name in pairs else 0 for name in calls}, calls
    with torch.no_grad():
        greedy = model(out[:, :-1])[0][:, prompt.shape[1] - 1 :].argmax(-1)
    assert torch.equal(out[:, prompt.shape[1] :], greedy), f"seed {seed}"


@pytest.mark.parametrize("scores_from", td.SCORES_FROM)
def test_decode_step_at_a_device_position_runs_the_kernels_and_equals_generate(monkeypatch, scores_from):
    """GPT.decode_step with the Triton *_at kernels (the position read on the device) continues a prefill with
    the tokens generate() picks through the per-step kernels, float64, the same small NSA as above; both ways of
    scoring the selection."""
    monkeypatch.setitem(td.INTERPRETER_TILES["select"], "scores_from", scores_from)
    calls = []
    for name in ("compressed_attention_and_select_at", "selected_and_window_attention_at"):
        fn = getattr(td, name)
        monkeypatch.setattr(td, name, lambda *a, _fn=fn, _n=name, **kw: calls.append(_n) or _fn(*a, **kw))
    monkeypatch.setattr(kernels, "TRITON_OPS", {})
    model, prompt, seed = small_nsa_model()
    out = model.generate(prompt, max_new_tokens=14)
    caches = model.new_caches(2, 20)
    with torch.no_grad():
        tok = model(prompt, caches=caches)[0][:, -1:].argmax(-1)
        steps = [tok]
        for t in range(6, 19):
            tok = model.decode_step(tok, caches, torch.tensor([t])).argmax(-1, keepdim=True)
            steps.append(tok)
    assert len(calls) == 2 * 2 * 13
    assert torch.equal(torch.cat(steps, dim=1), out[:, 6:]), f"seed {seed}"
