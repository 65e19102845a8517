"""The needle-selection diagnostic (evaluation/selection.py): the overlap rule, the window rule, and that the
recorder keeps, for every prompt of a batched generation, what that prompt's last position chose alone."""

import pytest
import torch

from data.synthetic import Marked
from evaluation.generation import greedy_generate
from evaluation.selection import SelectionRecorder
from model import GPT, AttentionConfig, ModelConfig
from model.attention.nsa import needle_block_hits, nsa_layers

NSA = AttentionConfig(name="nsa", compress_block=8, compress_stride=4, select_block=8, num_select=3, window=8)


def tiny_nsa(device: str = "cpu") -> GPT:
    torch.manual_seed(0)  # head dim 16: small enough for CPU, what the Triton kernels take on a GPU
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=64, vocab_multiple=8, max_seq_len=64)
    return GPT(cfg, NSA).to(device).eval()


def test_needle_block_hits_is_any_chosen_block_overlapping_the_span():
    ids = torch.tensor([[0, 3, -1], [1, 2, 5]])  # two heads' chosen blocks of 8 tokens
    assert needle_block_hits(ids, 17, 20, 8).tolist() == [False, True]  # block 2 only
    assert needle_block_hits(ids, 15, 17, 8).tolist() == [False, True]  # blocks 1 and 2: the second head has both
    assert needle_block_hits(ids, 24, 25, 8).tolist() == [True, False]  # block 3
    assert needle_block_hits(ids, 32, 40, 8).tolist() == [False, False]  # block 4: nobody; -1 never matches
    assert needle_block_hits(ids, 8, 16, 8).tolist() == [False, True]  # [8, 16) is block 1 alone
    with pytest.raises(ValueError, match="empty span"):
        needle_block_hits(ids, 5, 5, 8)


def test_needle_stats_window_and_gates():
    rec = SelectionRecorder(tiny_nsa())
    ids = torch.tensor([[[0, 2, -1], [0, 1, 2]], [[0, 5, -1], [0, 4, 5]]])  # [layers 2, Hkv 2, n 3]
    gates = torch.zeros(2, 4, 3)
    gates[..., 1], gates[..., 2] = 0.25, torch.arange(8.0).view(2, 4)
    rec.chosen[0] = (ids, gates)
    far = rec.needle_stats(0, Marked("x", 16, 20), prompt_len=48)  # block 2: both heads of layer 0, not layer 1
    assert far == {"needle_selected": 0.5, "needle_in_window": False, "gate_slc": 0.25, "gate_win": 3.5}
    # window 8 at prompt length 48: the last query sees keys 40..47
    assert not rec.needle_stats(0, Marked("x", 36, 40), prompt_len=48)["needle_in_window"]
    assert rec.needle_stats(0, Marked("x", 36, 41), prompt_len=48)["needle_in_window"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_recorder_keeps_each_prompts_own_last_selection(device):
    """Batched prefills (equal lengths together) keep each prompt's own choice, as a forward of it alone makes it;
    on CUDA through the Triton selection kernel."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the batch size must not move near-ties (a trainer test sets it)
    try:
        check_recorder(tiny_nsa(device), device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def check_recorder(model: GPT, device: str) -> None:
    layers = nsa_layers(model)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (40, 29, 40, 40, 13)]  # batched 2 by 2
    with SelectionRecorder(model) as rec:
        greedy_generate(model, prompts, 4, batch_size=2, on_prefill=rec.on_prefill)
    assert sorted(rec.chosen) == list(range(len(prompts)))
    assert all(not layer.record_selection and layer.selection is None for layer in layers)
    for i, prompt in enumerate(prompts):
        for layer in layers:
            layer.record_selection = True
        with torch.no_grad():
            model(torch.tensor([prompt], device=device))
        alone_ids = torch.stack([layer.selection[0, -1] for layer in layers]).cpu()
        alone_gates = torch.stack([layer.gates[0, -1] for layer in layers]).float().cpu()
        ids, gates = rec.chosen[i]
        assert ids.shape == (2, 2, 3) and gates.shape == (2, 4, 3)
        assert torch.equal(ids.long(), alone_ids.long()) and torch.allclose(gates, alone_gates, atol=1e-5)
        assert ((ids >= 0) | (ids == -1)).all() and (ids <= (len(prompt) - 1) // 8).all()  # causal block ids
    for layer in layers:
        layer.record_selection = False


def test_no_nsa_layer_records_nothing():
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, n_kv_head=2, vocab_size=64, vocab_multiple=8, max_seq_len=16)
    with SelectionRecorder(GPT(cfg, AttentionConfig(name="full"))) as rec:
        assert not rec
