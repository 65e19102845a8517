"""attention=nsa in the GPT: causality, cached decoding, gradients, configs, sparsity accounting, training."""

import json

import pytest
import torch

from model import GPT, AttentionConfig, ModelConfig
from model.attention.nsa import NativeSparseAttention, _blocks_shared, nsa_layers, nsa_sparsity
from tests.conftest import compose_config

# Small sizes that still exercise every rule: overlapping compression blocks (l = 2d), selection blocks larger
# than the compression stride, a window larger than a selection block.
NSA = dict(name="nsa", compress_block=8, compress_stride=4, select_block=8, num_select=4, window=16)


def model_cfg(n_kv_head: int = 2, **kw) -> ModelConfig:
    base = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=n_kv_head, vocab_size=100, max_seq_len=128)
    return ModelConfig(**(base | kw))


def make(n_kv_head: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0, **attn) -> GPT:
    torch.manual_seed(seed)
    return GPT(model_cfg(n_kv_head), AttentionConfig(**(NSA | attn))).to(dtype).eval()


def test_causal():
    """Logits at t do not depend on tokens after t (and do depend on the tokens before)."""
    model = make()
    a = torch.randint(0, 100, (2, 70))
    b = a.clone()
    b[:, 41:] = torch.randint(0, 100, (2, 29))
    with torch.no_grad():
        la, lb = model(a)[0], model(b)[0]
    torch.testing.assert_close(la[:, :41], lb[:, :41], rtol=0, atol=0)
    assert (la[:, 41:] - lb[:, 41:]).abs().amax() > 1e-3


# Chunk schedules: T < l prefill then single tokens (the first compressed block completes while decoding),
# chunked prefill crossing compression/selection/window boundaries, single tokens everywhere else.
SCHEDULES = {"short_prefill": [3] + [1] * 27, "chunked": [5, 1, 1, 20, 1, 3, 9, 1, 1, 2]}


@pytest.mark.parametrize("n_kv_head,shared_kv", [(4, False), (2, False), (1, True)], ids=["G1", "G2", "G4-shared"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_cached_forward_matches_full_forward(n_kv_head, shared_kv, schedule):
    model = make(n_kv_head, torch.float64, shared_kv=shared_kv)
    chunks = SCHEDULES[schedule]
    idx = torch.randint(0, 100, (2, sum(chunks)))
    with torch.no_grad():
        full = model(idx)[0]
        caches = model.new_caches(2, idx.shape[1] + 3)
        parts, pos = [], 0
        for n in chunks:
            parts.append(model(idx[:, pos : pos + n], caches=caches)[0])
            pos += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-9, atol=1e-9)
    cache = caches[0]
    assert cache.length == idx.shape[1] and cache.num_cmp == (idx.shape[1] - 8) // 4 + 1
    assert cache.tail_k.shape[1] == idx.shape[1] - cache.num_cmp * 4 < 8
    assert (cache.k_win is cache.k_slc) == shared_kv


def test_generate_matches_recomputation():
    """GPT.generate (prefill + one token at a time through the NSA cache) == greedy decoding by full forwards."""
    model = make(2, torch.float64, seed=1)
    prompt = torch.randint(0, 100, (2, 6))
    out = model.generate(prompt, max_new_tokens=30)
    ref = prompt
    with torch.no_grad():
        for _ in range(30):
            ref = torch.cat([ref, model(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)


def test_cached_queries_run_at_their_offset(monkeypatch):
    """After a cached prefix the kernel ops get only the new queries, with q_start = the cache length (no
    zero-padded query rows): a decoding step costs the keys it attends, not a whole sequence."""
    import model.attention.nsa as nsa_module

    seen = []
    ops = ("compressed_attention_and_select", "selected_and_window_attention")
    for name in ops:
        op = getattr(nsa_module, name)

        def spy(q, *args, _op=op, _name=name, **kw):
            seen.append((_name, q.shape[1], kw.get("q_start", 0)))
            return _op(q, *args, **kw)

        monkeypatch.setattr(nsa_module, name, spy)
    model = make()  # 2 layers
    caches = model.new_caches(1, 40)
    with torch.no_grad():
        for n in (30, 7, 1):
            seen.clear()
            start = caches[0].length
            model(torch.randint(0, 100, (1, n)), caches=caches)
            assert len(seen) == 2 * len(ops) and set(seen) == {(name, n, start) for name in ops}, seen


@pytest.mark.gpu
def test_cuda_kernels_decode_like_the_full_forward_and_train_in_bf16():
    """On CUDA the ops run the Triton kernels: cached decoding still matches the full forward (fp32), and a
    bf16-autocast training step gives finite gradients, with the float32 residual stream and with the bf16 one
    (model.residual_dtype=compute: the kernels see the same bf16 projections; the loss moves by rounding only)."""
    model = make().cuda()
    idx = torch.randint(0, 100, (2, 70), device="cuda")
    with torch.no_grad():
        full = model(idx)[0]
        caches = model.new_caches(2, 70)
        parts = [model(idx[:, :20], caches=caches)[0]]
        parts += [model(idx[:, t : t + 1], caches=caches)[0] for t in range(20, 70)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)
    model.train()
    losses = []
    for residual in ("fp32", "compute"):
        model.cfg.residual_dtype = residual
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(idx, idx)
        loss.backward()
        assert torch.isfinite(loss)
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (residual, name)
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-2, atol=0)


def test_cache_overflow_is_a_clear_error():
    model = make()
    caches = model.new_caches(1, 4)
    with pytest.raises(ValueError, match="cache is full"):
        model(torch.zeros(1, 5, dtype=torch.long), caches=caches)


@pytest.mark.parametrize("shared_kv", [False, True])
def test_every_parameter_learns(shared_kv):
    """One backward at a length where every branch is active: every parameter, and each branch's slice of the
    fused key/value projection and of the gates, gets a non-zero gradient."""
    model = make(shared_kv=shared_kv).train()
    idx = torch.randint(0, 100, (2, 48))
    _, loss = model(idx, idx)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    attn = model.blocks[0].attn
    sets = 1 if shared_kv else 3
    for s, kv in enumerate(attn.wkv.weight.grad.view(sets, 2, -1, 64)):
        for j in range(2):
            assert kv[j].abs().sum() > 0, (s, j)
    for b, g in enumerate(attn.w_gate.weight.grad.view(4, 3, 64).unbind(1)):  # [Hq, 3 branches, C]
        assert g.abs().sum() > 0, b
    n_proj = attn.wkv.weight.shape[0]
    assert n_proj == sets * 2 * 2 * 16  # (k, v) x Hkv x D per key/value set


def test_gates_start_half_open():
    attn = make().blocks[0].attn
    g = torch.sigmoid(attn.w_gate(torch.nn.functional.rms_norm(torch.randn(3, 10, 64), (64,))))
    assert (g - 0.5).abs().amax() < 0.2


def brute_force_keys(t: int, a: AttentionConfig) -> tuple[int, int, int]:
    """Keys query t attends per branch, by enumerating the definition (NSA.md) token by token."""
    blk, d, ls = a.compress_block, a.compress_stride, a.select_block
    cmp = sum(1 for i in range(t + 1) if i * d + blk - 1 <= t)
    win = sum(1 for s in range(t + 1) if s > t - a.window)
    visible = list(range(t // ls + 1))
    forced = {j for j in visible if j < a.num_init or j > t // ls - a.num_local}
    others = [j for j in visible if j not in forced]
    chosen = forced | set(others[: max(0, a.num_select - len(forced))])  # which others: irrelevant, all full
    slc = sum(1 for j in chosen for s in range(j * ls, (j + 1) * ls) if s <= t)
    return cmp, slc, win


@pytest.mark.parametrize(
    "attn",
    [
        NSA,
        dict(NSA, compress_block=16, compress_stride=8, select_block=16, num_select=5, window=8),
        dict(NSA, compress_block=4, compress_stride=4, select_block=12, num_select=3, num_init=2, num_local=1),
        dict(NSA, num_init=0, num_local=1, num_select=2, window=1),
    ],
)
def test_attended_keys_matches_brute_force(attn):
    a = AttentionConfig(**attn)
    module = NativeSparseAttention(model_cfg(), a, 0)
    for T in (1, 3, 8, 17, 64, 161):
        counts = torch.tensor([brute_force_keys(t, a) for t in range(T)], dtype=torch.float64).mean(0).tolist()
        got = module.attended_keys(T)
        assert [got["cmp"], got["slc"], got["win"]] == pytest.approx(counts, abs=1e-12), T
        assert got["total"] == pytest.approx(sum(counts))


def test_measured_keys_agree_with_attended_keys():
    """The keys really attended (from the chosen block ids) equal the analytic count, at a length where the
    selection slots fill (T > n * l') and at one where most slots are still -1 (T < n * l')."""
    model = make()
    for T in (100, 20):
        idx = torch.randint(0, 100, (2, T))
        stats = nsa_sparsity(model, T, idx)
        for key in ("cmp", "slc", "win", "total"):
            assert stats[f"measured_{key}"] == pytest.approx(stats[key], rel=1e-12), (T, key)
        assert stats["dense"] == (T + 1) / 2 and stats["fraction"] == pytest.approx(stats["total"] / stats["dense"])
        assert all(not layer.record_stats for layer in nsa_layers(model))
    # a decoding step records only its own query: query 99 sees (100 - 8) // 4 + 1 = 24 compressed tokens,
    # min(n, 13) = 4 blocks = 3 * 8 + 4 keys and w = 16 window keys
    caches = model.new_caches(1, 100)
    with torch.no_grad():
        model(torch.randint(0, 100, (1, 99)), caches=caches)
        model.blocks[1].attn.record_stats = True
        model(torch.randint(0, 100, (1, 1)), caches=caches)
    stats = model.blocks[1].attn.last_stats
    assert {k: stats[k] for k in ("cmp", "slc", "win", "total")} == {"cmp": 24.0, "slc": 28.0, "win": 16.0,
                                                                      "total": 68.0}
    assert stats["slc_blocks"] == 4.0 and stats["slc_blocks_shared4"] == 4.0  # one query: nothing to share


def test_blocks_shared_counts_distinct_blocks_per_tile():
    # tile 2: positions 0 and 1 chose the same two blocks, 2 and 3 one block each (-1 = none, repeats ignored)
    ids = torch.tensor([[0, 1], [1, 0], [2, -1], [3, 3]]).view(1, 4, 1, 2)
    assert _blocks_shared(ids, 2) == (2 + 2) / 4 and _blocks_shared(ids, 1) == (2 + 2 + 1 + 1) / 4
    assert _blocks_shared(ids[:, :3], 2) == (2 + 1) / 3  # a last, partial tile
    stats = nsa_sparsity(make(), 100, torch.randint(0, 100, (2, 100)))
    blocks, shared = stats["measured_slc_blocks"], stats["measured_slc_blocks_shared4"]
    assert blocks / 4 <= shared <= blocks and blocks > 1


def test_nsa_sparsity_needs_an_nsa_model():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="no NSA attention layer"):
        nsa_sparsity(GPT(model_cfg(), AttentionConfig()), 64)


def test_paper_config_is_sparse_at_long_lengths():
    """The paper's sizes: at the last position of 64k a query reads (T - l) // d + 1 + n * l' + w keys
    (NSA.md Table 4's count), and on average well under a fifth of full attention's keys."""
    module = NativeSparseAttention(model_cfg(), AttentionConfig(name="nsa"), 0)
    T = 65536
    last = {k: v[-1].item() for k, v in module._keys_per_position(torch.tensor([T - 1])).items()}
    assert sum(last.values()) == (T - 32) // 16 + 1 + 16 * 64 + 512
    assert module.attended_keys(T)["total"] / ((T + 1) / 2) < 0.2


def test_flops_per_token():
    module = NativeSparseAttention(model_cfg(), AttentionConfig(**NSA), 0)
    proj = 2 * (64 * 64 + 64 * 3 * 2 * 2 * 16 + 64 * 12 + 64 * 64)  # wq, wkv (3 sets), gates, wo
    assert module.flops_per_token(1) == proj + 4 * 4 * 16 * 2  # t = 0: 1 selected + 1 window key, no block
    phi = 2 * 2 * (8 * 16 * 32 + 32 * 16)  # phi_k and phi_v (hidden = 2 * head size), per KV head and block
    keys = module.attended_keys(64)["total"]
    assert module.flops_per_token(64) == pytest.approx(proj + phi * 2 * 15 / 64 + 4 * 4 * 16 * keys)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(num_select=2), r"attention\.num_select=2 < attention\.num_init=1 \+ attention\.num_local=2"),
        (dict(compress_stride=3), r"attention\.compress_stride=3 must divide attention\.compress_block=8"),
        (dict(compress_stride=8, compress_block=16, select_block=12), r"must divide attention\.select_block=12"),
        (dict(compress_block=16), r"attention\.compress_block=16 must be <= attention\.select_block=8"),
        (dict(window=0), r"attention\.window=0 must be positive"),
        (dict(compress_stride=0), r"attention\.compress_stride=0 must be positive"),
        (dict(num_local=-1), r"attention\.num_local=-1 must be non-negative"),
        (dict(compress_hidden=-4), r"attention\.compress_hidden=-4 must be >= 0"),
    ],
)
def test_bad_configs_fail_clearly(change, match):
    with pytest.raises(ValueError, match=match) as err:
        GPT(model_cfg(), AttentionConfig(**(NSA | change)))
    assert "\n" not in str(err.value) and str(err.value).startswith("attention=nsa: ")


def test_heads_must_group():
    with pytest.raises(ValueError, match=r"model\.n_head=4 is not a multiple of model\.n_kv_head=3"):
        NativeSparseAttention.check_config(model_cfg(3), AttentionConfig(**NSA))


def test_nsa_tiny_is_sparse_at_the_tiny_models_length():
    """configs/attention/nsa_tiny.yaml at model=tiny's 256 tokens: under half of full attention's keys."""
    from training.config import to_dataclass

    cfg = to_dataclass(compose_config(["attention=nsa_tiny", "run_dir=unused"]))
    assert cfg.model.max_seq_len == 256
    keys = NativeSparseAttention(cfg.model, cfg.attention, 0).attended_keys(256)
    assert keys["total"] / (257 / 2) == pytest.approx(0.453, abs=1e-3)


def test_train_nsa_tiny(tmp_path, data_overrides):
    """python train.py attention=nsa_tiny train.steps=30 (64-token sequences to stay fast on CPU): the loss
    falls, and the first metrics row logs the analytic keys per query of each branch."""
    from training.config import to_dataclass
    from training.trainer import train

    overrides = [
        f"run_dir={tmp_path}",
        "attention=nsa_tiny",
        "train.steps=30",
        "model.max_seq_len=64",
        "train.micro_batch_size=4",
        "train.batch_tokens=256",
        "train.val_interval=0",
        "train.val_tokens=512",
        "optim.warmup_steps=2",
        "optim.lr=3e-3",
        *data_overrides,
    ]
    cfg = compose_config(overrides)
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    typed = to_dataclass(cfg)
    expected = NativeSparseAttention(typed.model, typed.attention, 0).attended_keys(64)
    for key in ("cmp", "slc", "win", "total"):
        assert rows[0][f"attn_keys_{key}"] == pytest.approx(expected[key])
