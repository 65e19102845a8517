"""GPU checks of NSA's Triton decode kernels (kernels/triton_decode.py): bf16, realistic shapes, both ways of
combining the context splits, repeated launches, CUDA-graph capture, and GPT.generate against full forwards.

One decoding step is q [B, 1, Hq, D] at position t against keys 0..t. The kernels see bf16 inputs; the
reference (kernels/reference.py, cheap at T = 1) sees the same values upcast to float32: relative Frobenius
error must stay under 1e-2. Block selection is compared exactly except for near-ties (float32 sums in another
order can swap two blocks whose reference scores differ by rounding). Fresh random inputs every run (the seed
is in failure messages). Imports only torch, pytest, kernels/ and model/ (the GPU machine has no hydra).
"""

from __future__ import annotations

import random

import pytest
import torch

import kernels
from kernels import reference as ref
from tests.gpu_utils import DEV, rand, rel_err

pytestmark = pytest.mark.gpu
NSA = dict(block_size=32, stride=16, select_size=64, num_select=16, window=512)




def check(a, e, name, cuda_gen, tol=1e-2):
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.isfinite(a.float()).all(), f"{name}: non-finite values (seed {cuda_gen.initial_seed()})"
    err = rel_err(a, e)
    print(f"  {name}: relative error {err:.2e}")
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol} (seed {cuda_gen.initial_seed()})"


def decode_inputs(cuda_gen, B, t, Hq, Hkv, Dk, Dv):
    """q at position t, the compressed tokens it sees, and selection/window keys 0..t (slices of longer caches,
    as the model passes them)."""
    S, Tc = t + 1, ref.num_compressed_tokens(t + 1, NSA["block_size"], NSA["stride"])
    cache = {name: rand(cuda_gen, B, S + 100, Hkv, D) for name, D in (("k", Dk), ("v", Dv), ("kw", Dk), ("vw", Dv))}
    return dict(q=rand(cuda_gen, B, 1, Hq, Dk, scale=2.0), k_cmp=rand(cuda_gen, B, Tc, Hkv, Dk),
                v_cmp=rand(cuda_gen, B, Tc, Hkv, Dv),
                **{name: x[:, :S] for name, x in cache.items()})


def block_scores(q, kc, lse, t, G):
    """Reference block scores [B, Hkv, Nb] (float32) of the query at position t."""
    B, _, Hq, Dk = q.shape
    s = torch.einsum("bhgd,bihd->bhgi", q.float()[:, 0].view(B, Hq // G, G, Dk), kc.float())
    p = torch.exp(s * Dk ** -0.5 - lse[:, 0].view(B, Hq // G, G, 1)).sum(2)  # [B, Hkv, Tc]
    W = ref.overlap_weights(kc.shape[1], t // NSA["select_size"] + 1, block_size=NSA["block_size"],
                            stride=NSA["stride"], select_size=NSA["select_size"], device=DEV)
    return p @ W


def check_blocks(idx, x, lse, t, G, cuda_gen):
    """idx (the kernel's blocks for the query at t, chosen on `lse`) equals the float32 reference's choice on the
    same lse, or differs only where the reference's own scores nearly tie; returns the reference's idx."""
    ss, n = NSA["select_size"], NSA["num_select"]
    idx_r = ref.select_blocks(x["q"].float(), x["k_cmp"].float(), lse, block_size=NSA["block_size"],
                              stride=NSA["stride"], select_size=ss, num_select=n, q_start=t)
    assert ((idx >= 0).sum(-1) == min(t // ss + 1, n)).all(), "wrong number of chosen blocks"
    assert (idx <= t // ss).all(), "a future block was chosen"
    differ = (idx != idx_r).any(-1).nonzero().tolist()
    if differ:  # each differing row must be a near-tie in the reference's own scores
        score = block_scores(x["q"], x["k_cmp"], lse, t, G)
        for b, _, h in differ:
            mine, theirs = set(idx[b, 0, h].tolist()) - {-1}, set(idx_r[b, 0, h].tolist()) - {-1}
            lo_mine = min(score[b, h, j].item() for j in mine - theirs)
            hi_theirs = max(score[b, h, j].item() for j in theirs - mine)
            assert hi_theirs - lo_mine <= 1e-3 * score[b, h].max().item() + 1e-6, (
                f"(b={b}, h={h}): kernel chose {sorted(mine - theirs)} over {sorted(theirs - mine)}, scores "
                f"{lo_mine:.6g} < {hi_theirs:.6g} (seed {cuda_gen.initial_seed()})")
    return idx_r


SHAPES = [  # B, t, Hq, Hkv, Dk, Dv; the G = 1 and G = 8 shapes share the G <= 16 kernels with their head dims
    (1, 16383, 64, 4, 128, 128),
    (8, 8191, 64, 4, 128, 128),
    (3, 20000, 16, 1, 64, 64),
    (2, 5000, 32, 2, 192, 128),
    (2, 3000, 8, 8, 128, 128),
    (2, 700, 16, 2, 64, 64),
]
# every shape with the in-launch combine ("fused"); the second launch ("kernel", the decode tiles' default) on two
# of them (the interpreter tests cover both everywhere): fewer kernel variants to compile on the GPU
CASES = [pytest.param(s, "fused", id=f"B{s[0]}-t{s[1]}-Hq{s[2]}-Hkv{s[3]}-D{s[4]}x{s[5]}-fused") for s in SHAPES]
CASES += [pytest.param(SHAPES[i], "kernel", id=f"B{SHAPES[i][0]}-t{SHAPES[i][1]}-Hkv{SHAPES[i][3]}-kernel")
          for i in (0, 4)]


@pytest.mark.parametrize("shape,combine", CASES)
def test_decode_step_bf16(cuda_gen, shape, combine):
    from kernels import triton_decode as td

    B, t, Hq, Hkv, Dk, Dv = shape
    G = Hq // Hkv
    x = decode_inputs(cuda_gen, B, t, Hq, Hkv, Dk, Dv)
    f32 = {name: v.float() for name, v in x.items()}
    bs, d, ss, n, w = (NSA[k] for k in ("block_size", "stride", "select_size", "num_select", "window"))
    o, lse = td.compressed_attention(x["q"], x["k_cmp"], x["v_cmp"], block_size=bs, stride=d, q_start=t,
                                     combine=combine)
    o_r, lse_r = ref.compressed_attention(f32["q"], f32["k_cmp"], f32["v_cmp"], block_size=bs, stride=d, q_start=t)
    check(o, o_r, "compressed o", cuda_gen)
    assert (lse - lse_r).abs().max().item() < 2e-2, f"lse differs (seed {cuda_gen.initial_seed()})"

    sizes = dict(block_size=bs, stride=d, select_size=ss, num_select=n, q_start=t)
    idx = td.select_blocks(x["q"], x["k_cmp"], lse_r, **sizes, combine=combine)
    idx_r = check_blocks(idx, x, lse_r, t, G, cuda_gen)

    o = td.selected_attention(x["q"], x["k"], x["v"], idx_r, select_size=ss, q_start=t, combine=combine)
    check(o, ref.selected_attention(f32["q"], f32["k"], f32["v"], idx_r, select_size=ss, q_start=t),
          "selected o", cuda_gen)
    o = td.window_attention(x["q"], x["kw"], x["vw"], window=w, q_start=t, combine=combine)
    check(o, ref.window_attention(f32["q"], f32["kw"], f32["vw"], window=w, q_start=t), "window o", cuda_gen)
    o_slc, o_win = td.selected_and_window_attention(x["q"], x["k"], x["v"], idx_r, x["kw"], x["vw"], select_size=ss,
                                                    window=w, q_start=t, combine=combine)
    check(o_slc, ref.selected_attention(f32["q"], f32["k"], f32["v"], idx_r, select_size=ss, q_start=t),
          "pair: selected o", cuda_gen)
    check(o_win, ref.window_attention(f32["q"], f32["kw"], f32["vw"], window=w, q_start=t), "pair: window o",
          cuda_gen)


@pytest.mark.parametrize("shape,combine", CASES)
def test_compressed_and_select_from_the_attention_scores_bf16(cuda_gen, shape, combine):
    """scores_from="attention" (the selection reads the scores compressed attention stored, beside its combine):
    o and lse against the float32 reference, and the blocks against the reference's choice on the returned lse
    (up to near-ties)."""
    from kernels import triton_decode as td

    B, t, Hq, Hkv, Dk, Dv = shape
    x = decode_inputs(cuda_gen, B, t, Hq, Hkv, Dk, Dv)
    bs, d, ss, n = (NSA[k] for k in ("block_size", "stride", "select_size", "num_select"))
    o, lse, idx = td.compressed_attention_and_select(x["q"], x["k_cmp"], x["v_cmp"], block_size=bs, stride=d,
                                                     select_size=ss, num_select=n, q_start=t, combine=combine,
                                                     select_cfg=dict(scores_from="attention"))
    o_r, lse_r = ref.compressed_attention(x["q"].float(), x["k_cmp"].float(), x["v_cmp"].float(), block_size=bs,
                                          stride=d, q_start=t)
    check(o, o_r, "compressed o", cuda_gen)
    assert (lse - lse_r).abs().max().item() < 2e-2, f"lse differs (seed {cuda_gen.initial_seed()})"
    check_blocks(idx, x, lse, t, Hq // Hkv, cuda_gen)


def nsa_step(x, t):
    """The public ops as the model calls them for one decoding step (selected and window attention in one
    launch); returns the three branch outputs and the chosen blocks."""
    bs, d, ss, n, w = (NSA[k] for k in ("block_size", "stride", "select_size", "num_select", "window"))
    o_cmp, _, idx = kernels.compressed_attention_and_select(x["q"], x["k_cmp"], x["v_cmp"], block_size=bs, stride=d,
                                                            select_size=ss, num_select=n, q_start=t)
    o_slc, o_win = kernels.selected_and_window_attention(x["q"], x["k"], x["v"], idx, x["kw"], x["vw"],
                                                         select_size=ss, window=w, q_start=t)
    return o_cmp, o_slc, o_win, idx


def test_repeated_fused_launches_agree_and_leave_the_counters_zeroed(cuda_gen):
    """The in-launch combine (last program per group) is race-free: 50 launches give bit-identical results,
    and the per-group counters are back at zero after every launch."""
    from kernels import triton_decode as td

    t = 65535
    x = decode_inputs(cuda_gen, 1, t, 64, 4, 128, 128)
    first = nsa_step(x, t)
    for _ in range(50):
        again = nsa_step(x, t)
        for a, e in zip(again, first):
            assert torch.equal(a, e), "a repeated launch gave a different result"
    torch.cuda.synchronize()
    assert int(td._COUNTERS[torch.device(DEV, torch.cuda.current_device())].abs().sum()) == 0


@pytest.mark.parametrize("scores_from", ["keys", "attention"])
def test_decode_step_in_a_cuda_graph(cuda_gen, scores_from):
    """A decoding step captured in a CUDA graph and replayed on new queries equals the eager step, with either way
    of scoring the selection."""
    from kernels import triton_decode as td
    from kernels.triton_common import tiles_set

    t = 30000
    x = decode_inputs(cuda_gen, 2, t, 16, 1, 64, 64)
    with tiles_set(*td.DECODE_TILES["select"].values(), scores_from=scores_from):
        check_graph_replays(cuda_gen, x, t, lambda: nsa_step(x, t), "graph replay differs from the eager step")


def check_graph_replays(cuda_gen, x, t, expect, what: str) -> None:
    """nsa_step captured in a CUDA graph and replayed on three new queries: every replay's outputs equal expect()'s
    on the same queries, bit for bit."""
    nsa_step(x, t)  # warm up (compiles, allocates the counters) before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = nsa_step(x, t)
    for _ in range(3):
        x["q"].copy_(rand(cuda_gen, *x["q"].shape, scale=2.0))
        graph.replay()
        for a, e in zip(out, expect()):
            assert torch.equal(a, e), f"{what} (seed {cuda_gen.initial_seed()})"


@pytest.mark.parametrize("combine", ["kernel", "fused"])
def test_programmatic_dependent_launch_gives_the_serial_bits(cuda_gen, combine):
    """pdl (each decode kernel launched while the one before still runs, waiting for it at its start): the step's
    outputs are bit-identical to serial launches, launch after launch, and in a CUDA graph replayed on new queries
    (main heads, 64k, both combine modes)."""
    from kernels import triton_decode as td
    from kernels.triton_common import tiles_set

    if not td._pdl({"pdl": True}, torch.device(DEV, torch.cuda.current_device()))["PDL"]:
        pytest.skip("programmatic dependent launch needs compute capability >= 9")
    t = 65535
    x = decode_inputs(cuda_gen, 2, t, 64, 4, 128, 128)
    tiles = (*td.DECODE_TILES["attn"].values(), *td.DECODE_TILES["select"].values())

    def serial():
        with tiles_set(*tiles, pdl=False):
            return nsa_step(x, t)
    with tiles_set(*tiles, combine=combine, pdl=True):
        expect = serial()
        for _ in range(20):
            for a, e in zip(nsa_step(x, t), expect):
                assert torch.equal(a, e), f"a launch with pdl differs (seed {cuda_gen.initial_seed()})"
        check_graph_replays(cuda_gen, x, t, serial, "a graph with pdl differs from serial launches")


def small_gpu_model(attention: str = "nsa"):
    """(float32 model on the GPU, prompt [3, 300], seed): 2 layers, paper-ratio NSA sizes scaled down."""
    from model import GPT, AttentionConfig, ModelConfig

    seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=2, n_embd=256, n_head=8, n_kv_head=2, vocab_size=512, max_seq_len=2048)
    attn = (AttentionConfig(name="nsa", compress_block=16, compress_stride=8, select_block=32, num_select=8,
                            window=64) if attention == "nsa" else AttentionConfig())
    return GPT(cfg, attn).to(DEV).eval(), torch.randint(0, 512, (3, 300), device=DEV), seed


def assert_greedy(model, out: torch.Tensor, n_prompt: int, seed: int) -> None:
    """out [B, n_prompt + new] picks the tokens of greedy decoding by one full forward; since decoding sums in
    another order, a row may leave that path only at a near-tie (checked at its first differing token)."""
    with torch.no_grad():
        logits = model(out[:, :-1])[0][:, n_prompt - 1 :]
    greedy = logits.argmax(-1)
    new = out[:, n_prompt:]
    assert torch.isfinite(logits).all()
    for b in range(new.shape[0]):
        differ = (new[b] != greedy[b]).nonzero()
        if len(differ):  # after a divergence the row's later positions are not comparable: check the first one
            i = differ[0].item()
            gap = (logits[b, i, greedy[b, i]] - logits[b, i, new[b, i]]).item()
            assert gap < 1e-3, f"row {b}, token {i}: generate took a token {gap:.2e} below the best (seed {seed})"


def test_generate_on_gpu_equals_greedy_full_forwards():
    """GPT.generate with the decode kernels (float32 model) picks the tokens of greedy decoding by one full
    forward (up to near-ties)."""
    model, prompt, seed = small_gpu_model()
    assert_greedy(model, model.generate(prompt, max_new_tokens=40), prompt.shape[1], seed)


@pytest.mark.parametrize("attention", ["full", "nsa", "nsa-scores"])
def test_generate_with_a_cuda_graph_decodes_greedily(attention):
    """generate(cuda_graph=True): prefill, one eager step, then replays of one captured decode_step (fixed shapes,
    position on the device; NSA through the *_at decode kernels, "nsa-scores" with the selection reading compressed
    attention's scores) decode greedily like a full forward (up to near-ties), deterministically, and with eos stop
    as generate's loop does."""
    from kernels import triton_decode as td
    from kernels.triton_common import tiles_set
    from model.gpt import _stop_at_eos

    scores_from = "attention" if attention == "nsa-scores" else "keys"
    with tiles_set(*td.DECODE_TILES["select"].values(), scores_from=scores_from):
        model, prompt, seed = small_gpu_model(attention.removesuffix("-scores"))
        graphed = model.generate(prompt, max_new_tokens=40, cuda_graph=True)
        assert graphed.shape == (3, 340) and torch.equal(graphed[:, :300], prompt)
        assert_greedy(model, graphed, prompt.shape[1], seed)
        assert torch.equal(model.generate(prompt, 40, cuda_graph=True), graphed), f"not deterministic (seed {seed})"
        eos = int(graphed[0, 310])
        expect = torch.cat([prompt, _stop_at_eos(graphed[:, 300:], eos)], dim=1)
        assert torch.equal(model.generate(prompt, 40, eos_id=eos, cuda_graph=True), expect), f"seed {seed}"
