"""GPT: shapes, parameter counts, causality, KV-cache generation, FLOPs."""

import dataclasses

import pytest
import torch

from model import GPT, AttentionConfig, ModelConfig, flops_per_token, num_params
from model.gpt import RMSNorm, sample_next


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=100, max_seq_len=64)
    return ModelConfig(**(base | kw))


def make(cfg: ModelConfig | None = None, attn: AttentionConfig | None = None, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg or tiny(), attn or AttentionConfig()).eval()


def expected_params(c: ModelConfig) -> int:
    D, V = c.head_size, c.padded_vocab()
    attn = c.n_embd * c.n_head * D + c.n_embd * 2 * c.n_kv_head * D + c.n_head * D * c.n_embd
    mlp = 3 * c.n_embd * c.hidden_dim
    per_layer = attn + mlp + 2 * c.n_embd  # two RMSNorm weights
    emb = V * c.n_embd * (1 if c.tie_embeddings else 2)
    return c.n_layer * per_layer + emb + c.n_embd


@pytest.mark.parametrize("tie", [False, True])
def test_shapes_and_param_count(tie):
    cfg = tiny(tie_embeddings=tie)
    model = make(cfg)
    assert model.vocab_size == 128  # padded to a multiple of 64
    idx = torch.randint(0, 100, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 128) and logits.dtype == torch.float32
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert num_params(model) == expected_params(cfg)
    assert num_params(model, include_embedding=False) == expected_params(cfg) - (0 if tie else 128 * 64)


def test_configured_sizes_are_in_range():
    from tests.conftest import compose_config
    from training.config import to_dataclass

    for name, lo, hi in (("tiny", 0.5e6, 5e6), ("small", 100e6, 150e6), ("medium", 300e6, 420e6)):
        cfg = to_dataclass(compose_config([f"model={name}"]))
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = 2048
        with torch.device("meta"):
            n = num_params(GPT(cfg.model, cfg.attention))
        assert lo <= n <= hi, (name, n)


def test_initial_loss_is_near_uniform():
    model = make()
    idx = torch.randint(0, 100, (4, 32))
    _, loss = model(idx, idx)
    assert abs(loss.item() - torch.log(torch.tensor(128.0)).item()) < 0.5


def test_depth_scaled_init():
    model = make(tiny(n_layer=8))
    out_std = model.blocks[0].mlp.w_down.weight.std().item()
    in_std = model.blocks[0].mlp.w_gate_up.weight.std().item()
    assert in_std == pytest.approx(0.02, rel=0.1)
    assert out_std == pytest.approx(0.02 / 4, rel=0.1)  # 1 / sqrt(2 * 8)


def test_causality():
    """Logits at position t do not change when tokens after t change."""
    model = make()
    a = torch.randint(0, 100, (2, 40))
    b = a.clone()
    b[:, 25:] = torch.randint(0, 100, (2, 15))
    la, _ = model(a)
    lb, _ = model(b)
    torch.testing.assert_close(la[:, :25], lb[:, :25], rtol=0, atol=1e-5)
    assert not torch.allclose(la[:, 25:], lb[:, 25:])


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_kv_cache_matches_full_forward(n_kv_head):
    """Prefill + token-by-token decoding with the cache gives the logits of recomputing everything."""
    model = make(tiny(n_kv_head=n_kv_head))
    idx = torch.randint(0, 100, (2, 30))
    full, _ = model(idx)
    caches = model.new_caches(2, 30)
    pre, _ = model(idx[:, :11], caches=caches)
    steps = [model(idx[:, t : t + 1], caches=caches)[0] for t in range(11, 30)]
    cached = torch.cat([pre, *steps], dim=1)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
    # a multi-token chunk after a prefix (chunked prefill) takes the masked path
    caches = model.new_caches(2, 30)
    model(idx[:, :7], caches=caches)
    chunk, _ = model(idx[:, 7:20], caches=caches)
    torch.testing.assert_close(chunk, full[:, 7:20], rtol=1e-4, atol=1e-4)


def test_generate_greedy_equals_recompute():
    model = make()
    prompt = torch.randint(0, 100, (3, 8))
    out = model.generate(prompt, max_new_tokens=12)
    assert out.shape == (3, 20) and torch.equal(out[:, :8], prompt)
    seq = prompt
    for _ in range(12):  # greedy decoding without a cache
        logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_generate_sampling_and_eos():
    model = make()
    prompt = torch.randint(0, 100, (2, 4))
    g1 = torch.Generator().manual_seed(1)
    g2 = torch.Generator().manual_seed(1)
    a = model.generate(prompt, 10, temperature=1.0, top_k=5, generator=g1)
    b = model.generate(prompt, 10, temperature=1.0, top_k=5, generator=g2)
    assert torch.equal(a, b)
    # eos: once emitted, a row keeps emitting it; generation stops when all rows are done
    greedy = model.generate(prompt, 10)
    eos = int(greedy[0, 4])
    out = model.generate(prompt, 10, eos_id=eos)
    first = (out[0, 4:] == eos).nonzero()[0].item()
    assert (out[0, 4 + first :] == eos).all()


NSA_TINY = AttentionConfig(name="nsa", compress_block=4, compress_stride=2, select_block=4, num_select=4, window=8)


@pytest.mark.parametrize("attn", [AttentionConfig(), NSA_TINY, dataclasses.replace(NSA_TINY, shared_kv=True)],
                         ids=["full", "nsa", "nsa-shared-kv"])
def test_decode_step_at_a_device_position_equals_the_cached_forward(attn):
    """GPT.decode_step (fixed shapes, position in a tensor: what generate(cuda_graph=True) captures) after a
    prefill gives the logits of the usual one-token cached forward, step after step: NSA's cache writes, its
    compression ring and the compressed token each completed block adds (with l=4, d=2 one every other step)."""
    model = make(attn=attn).double()
    prompt = torch.randint(0, 100, (2, 7))
    caches_a, caches_b = model.new_caches(2, 30), model.new_caches(2, 30)
    with torch.no_grad():
        logits_a, _ = model(prompt, caches=caches_a)
        model(prompt, caches=caches_b)
        tok = logits_a[:, -1:].argmax(-1)
        for t in range(7, 30):
            logits_a, _ = model(tok, caches=caches_a)
            logits_b = model.decode_step(tok, caches_b, torch.tensor([t]))
            torch.testing.assert_close(logits_b, logits_a[:, -1], rtol=1e-9, atol=1e-9, msg=f"position {t}")
            tok = logits_a[:, -1:].argmax(-1)


def test_stop_at_eos_matches_the_generate_loop():
    from model.gpt import _stop_at_eos

    new = torch.tensor([[5, 7, 2, 9], [3, 7, 8, 7]])
    assert torch.equal(_stop_at_eos(new, None), new)
    assert torch.equal(_stop_at_eos(new, 7), torch.tensor([[5, 7], [3, 7]]))  # both rows done at column 1
    assert torch.equal(_stop_at_eos(new, 2), torch.tensor([[5, 7, 2, 2], [3, 7, 8, 7]]))  # row 1 never ends
    with pytest.raises(ValueError, match="cuda_graph=True"):
        make().generate(torch.randint(0, 100, (1, 3)), 4, cuda_graph=True)


def test_top_k_restricts_support():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(500, 1)
    tokens = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {3, 4}
    assert sample_next(logits[:1], 0.0, None).item() == 4


def test_flops_per_token_counts_attention():
    model = make()
    short, long = flops_per_token(model, 64), flops_per_token(model, 1024)
    c = model.cfg
    # attention term grows by 3 (fwd+bwd) * 2 * 2 * H * D * (mean keys difference) per layer
    expected_gap = 3 * c.n_layer * 4 * c.n_head * c.head_size * ((1024 + 1) / 2 - (64 + 1) / 2)
    assert long - short == pytest.approx(expected_gap)
    dense = 6 * (num_params(model) - model.embed.weight.numel() - 2 * c.n_layer * c.n_embd - c.n_embd)
    assert short == pytest.approx(dense + 3 * c.n_layer * 4 * c.n_head * c.head_size * 32.5)


def test_checkpoint_with_separate_q_and_kv_projections_loads():
    """A state dict from before the fused q/k/v projection (wq, and wkv holding k then v) loads, and the model
    computes what those weights computed: q = x wq^T, (k, v) = x wkv^T split in two, then causal attention."""
    from model.attention.full import sdpa_bthd

    model = make()
    c, attn = model.cfg, model.blocks[0].attn
    D = c.head_size
    old = {k: v for k, v in model.state_dict().items() if ".wqkv." not in k}
    gen = torch.Generator().manual_seed(1)
    for i in range(c.n_layer):
        old[f"blocks.{i}.attn.wq.weight"] = torch.randn(c.n_head * D, c.n_embd, generator=gen) * 0.02
        old[f"blocks.{i}.attn.wkv.weight"] = torch.randn(2 * c.n_kv_head * D, c.n_embd, generator=gen) * 0.02
    model.load_state_dict(old)  # strict: no key left over or missing

    x = torch.randn(2, 16, c.n_embd, generator=gen)
    wq, wkv = old["blocks.0.attn.wq.weight"], old["blocks.0.attn.wkv.weight"]
    q = model.rotary((x @ wq.T).view(2, 16, c.n_head, D), 0)
    k, v = (x @ wkv.T).view(2, 16, 2, c.n_kv_head, D).unbind(2)
    expected = attn.wo(sdpa_bthd(q, model.rotary(k, 0), v).reshape(2, 16, -1))
    torch.testing.assert_close(attn(x, model.rotary), expected, rtol=1e-5, atol=1e-6)


def test_bad_model_configs_fail_clearly():
    with pytest.raises(ValueError, match="n_kv_head"):
        make(tiny(n_head=4, n_kv_head=3))
    with pytest.raises(ValueError, match="n_embd"):
        make(tiny(n_embd=66, n_head=4))
    with pytest.raises(ValueError, match="attention.name"):
        make(attn=AttentionConfig(name="nope"))
    with pytest.raises(ValueError, match="model.loss_chunk=-1 is negative"):
        make(tiny(loss_chunk=-1))
    with pytest.raises(ValueError, match="model.residual_dtype='bf16' is not a residual dtype: use fp32 or compute"):
        make(tiny(residual_dtype="bf16"))


def test_caches_follow_autocast_dtype():
    """Under autocast the cache holds the compute dtype, so decoding never converts the whole cache."""
    model = make()
    assert model.new_caches(1, 8)[0].k.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        caches = model.new_caches(1, 8)
        assert caches[0].k.dtype == torch.bfloat16
        out = model.generate(torch.randint(0, 100, (1, 4)), max_new_tokens=3)
    assert out.shape == (1, 7)


def test_activation_checkpointing_gives_same_loss_and_grads():
    idx = torch.randint(0, 100, (2, 40))
    results = []
    for ac in (False, True):
        model = make(seed=3).train()
        model.checkpoint_blocks = ac
        _, loss = model(idx, idx)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_loss_gives_same_loss_and_grads(tie, dtype):
    """loss_chunk > 0 (fused lm_head + cross-entropy, 80 rows in chunks of 24) = the plain loss on the full logits,
    with ignored targets; the tied embedding gets both of its gradients."""
    idx = torch.randint(0, 100, (2, 40))
    targets = torch.randint(0, 100, (2, 40))
    targets[:, -7:] = -1
    results = []
    for chunk in (0, 24):
        model = make(tiny(tie_embeddings=tie, loss_chunk=chunk), seed=5).to(dtype).train()
        logits, loss = model(idx, targets)
        assert (logits is None) == (chunk > 0)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(l1, l0, **tol)
    assert g1.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], **tol, msg=name)


def test_rms_norm_rounds_once_with_float32_gains():
    """A bf16 input is normalised in float32 with the float32 weight and rounded once at the output: gains that
    differ by less than a bf16 step (here 2^-10 next to 1.0) still change the output. float64 stays float64."""
    torch.manual_seed(0)
    norm = RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1.0 + torch.randint(0, 4, (64,)) * 2.0**-10)
    x = torch.randn(8, 64) * 3
    xb = x.bfloat16()
    normalised = xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    got = norm(xb)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, (normalised * norm.weight).bfloat16(), rtol=0, atol=0)
    rounded_gains = (normalised * norm.weight.bfloat16().float()).bfloat16()
    assert not torch.equal(got, rounded_gains)  # the test's gains are not representable in bf16
    x64 = x.double()
    assert norm.double()(x64).dtype == torch.float64


@pytest.mark.parametrize("attn", [AttentionConfig(), AttentionConfig(name="nsa", compress_block=8, compress_stride=4,
                                                                     select_block=8, num_select=3, window=16)],
                         ids=["full", "nsa"])
def test_compute_dtype_residual_stream(attn):
    """model.residual_dtype=compute under bf16 autocast: every block reads and writes a bf16 residual stream, and
    loss and gradients stay near the float32 stream's (the same weights); without autocast it changes nothing."""
    idx, targets = torch.randint(0, 100, (2, 48)), torch.randint(0, 100, (2, 48))
    results = {}
    for residual in ("fp32", "compute"):
        model = make(tiny(residual_dtype=residual, loss_chunk=32), attn, seed=7).train()
        _, loss_plain = model(idx, targets)  # no autocast: float32 either way
        seen: list[tuple[torch.dtype, torch.dtype]] = []
        hooks = [b.register_forward_hook(lambda m, i, o, seen=seen: seen.append((i[0].dtype, o.dtype)))
                 for b in model.blocks]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, targets)
        for h in hooks:
            h.remove()
        loss.backward()
        want = torch.bfloat16 if residual == "compute" else torch.float32
        assert seen == [(want, want)] * len(model.blocks)
        results[residual] = (loss_plain.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    (p0, l0, g0), (p1, l1, g1) = results["fp32"], results["compute"]
    torch.testing.assert_close(p1, p0, rtol=0, atol=0)
    torch.testing.assert_close(l1, l0, rtol=1e-3, atol=0)
    for name in g0:  # bf16 activations both ways; the stream's rounding moves each gradient by far less than its norm
        assert (g1[name] - g0[name]).norm() <= 0.05 * g0[name].norm(), name
