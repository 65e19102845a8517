"""Batched greedy decoding with the KV cache gives exactly what recomputing the whole sequence gives, for every
registered attention type; stop tokens, min_new_tokens and batching by equal length behave as documented."""

import pytest
import torch

from evaluation.generation import Throughput, batches_of_equal_length, greedy_generate, teacher_forced
from model import GPT, AttentionConfig, ModelConfig

ATTENTIONS = {
    "full": AttentionConfig(name="full"),
    "nsa": AttentionConfig(name="nsa", compress_block=8, compress_stride=4, select_block=8, num_select=3,
                           window=8),
}


def tiny_gpt(attention: str) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=64, vocab_multiple=8, max_seq_len=48)
    model = GPT(cfg, ATTENTIONS[attention])
    with torch.no_grad():  # larger logits than at init: fewer argmax ties, so the comparison is meaningful
        model.lm_head.weight.mul_(20)
    return model.eval()


def recompute_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_cached_greedy_matches_full_recompute(attention):
    model = tiny_gpt(attention)
    g = torch.Generator().manual_seed(1)
    # mixed lengths (batched by equal length, output order kept); long enough to cross NSA's blocks and window
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (20, 33, 20, 9, 33, 20)]
    stats = Throughput()
    out = greedy_generate(model, prompts, 12, batch_size=2, stats=stats)
    for prompt, got in zip(prompts, out):
        assert got == recompute_greedy(model, prompt, 12)
    assert stats.prefill_tokens == sum(map(len, prompts)) and stats.decode_tokens == 6 * 11


def test_stop_tokens_and_min_new_tokens():
    model = tiny_gpt("full")
    prompt = list(range(10))
    free = greedy_generate(model, [prompt], 6)[0]
    assert len(free) == 6
    assert greedy_generate(model, [prompt], 6, stop_ids=[free[0]])[0] == []  # stops at once, stop excluded
    forced = greedy_generate(model, [prompt], 6, stop_ids=[free[0]], min_new_tokens=1)[0]
    assert forced and forced[0] != free[0]  # masked as the first token, like transformers' min_length
    cut = greedy_generate(model, [prompt], 6, stop_ids=[free[2]])[0]
    assert cut == free[: free.index(free[2])]
    with pytest.raises(ValueError, match="empty prompt"):
        greedy_generate(model, [[]], 3)


def test_batches_of_equal_length():
    assert batches_of_equal_length([5, 3, 5, 5, 3], 2) == [[0, 2], [3], [1, 4]]


def test_teacher_forced_matches_forward_and_extends_rope():
    model = tiny_gpt("full")
    x = torch.randint(0, 64, (2, 80))  # beyond max_seq_len=48: RoPE tables grow
    loss, pred = teacher_forced(model, x)
    assert loss.shape == pred.shape == (2, 79)
    logits, mean_loss = model(x[:, :-1], x[:, 1:])
    assert torch.allclose(loss.mean(), mean_loss, atol=1e-5)
    assert torch.equal(pred, logits.argmax(-1))
