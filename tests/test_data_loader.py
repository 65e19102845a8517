"""TokenLoader: the global stream (permuted per epoch, split across ranks), exact resume, shard boundaries,
fixed validation order, and corrupt-data detection.

Most tests use a hand-made dataset whose tokens are 0, 1, 2, ...: a window then names itself (sample id =
first token // seq_len) and any misread token shows.
"""

import json
import pickle

import numpy as np
import pytest
import torch

from data import DataError, TokenLoader
from data.loader import epoch_permutation
from data.shards import HEADER_BYTES, ShardWriter
from data.tokenizer import train_bpe

SEQ = 8


@pytest.fixture(scope="module")
def tok():
    return train_bpe(iter(["some text to learn a tiny vocabulary from"] * 10), vocab_size=280, show_progress=False)


def make_dataset(folder, tok, shard_sizes=(300, 37, 250), val_tokens=100):
    """Counting tokens 0..N-1 in shards of the given sizes (uint32), plus a val split; returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(folder / "tokenizer.json")
    splits = {}
    for split, sizes in (("train", shard_sizes), ("val", (val_tokens,))):
        w = ShardWriter(folder, split, max(sizes), np.dtype(np.uint32), tok.hash)
        start = 0
        for n in sizes:
            w.add(np.arange(start, start + n, dtype=np.uint32), np.array([0]))
            w.flush()
            start += n
        splits[split] = {"tokens": w.n_tokens, "docs": w.n_docs, "shards": w.shards}
    meta = {"tokenizer_hash": tok.hash, "eos_token": tok.eos_token, "eos_id": tok.eos_id,
            "vocab_size": tok.vocab_size, "splits": splits}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def ds(tmp_path, tok):
    return make_dataset(tmp_path / "ds", tok)


def ids(x: torch.Tensor) -> list[int]:
    """Sample ids of a batch (rows must be contiguous counting windows)."""
    first = x[:, 0]
    assert torch.equal(x, first[:, None] + torch.arange(x.shape[1])), "a row is not one contiguous window"
    assert torch.all(first % SEQ == 0)
    return (first // SEQ).tolist()


def loader(ds, **kw):
    args = dict(seq_len=SEQ, batch_size=4)
    args.update(kw)
    return TokenLoader(ds, "train", **args)


def test_shapes_and_shift(ds):
    x, y = loader(ds).next_batch()
    assert x.shape == y.shape == (4, SEQ) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one token (counting data)
    assert x.is_contiguous() and y.is_contiguous()


def test_epoch_is_a_permutation_without_repeats(ds):
    ld = loader(ds, batch_size=5)
    n = ld.samples_per_epoch
    assert n == (587 - 1) // SEQ == 73
    seen = []
    while len(seen) < 3 * n:
        seen += ids(ld.next_batch()[0])
    epochs = [seen[i * n:(i + 1) * n] for i in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(n))  # every window exactly once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled each epoch
    assert epochs[0] == epoch_permutation(n, 0, 0).tolist()


def test_deterministic_for_a_seed(ds):
    a = [ids(loader(ds, seed=3).next_batch()[0]) for _ in range(1)]
    b = [ids(loader(ds, seed=3).next_batch()[0]) for _ in range(1)]
    c = [ids(loader(ds, seed=4).next_batch()[0]) for _ in range(1)]
    assert a == b and a != c


def test_ranks_disjoint_and_union_is_world_size_invariant(ds):
    b, steps = 3, 10
    single = loader(ds, batch_size=b)
    wide = loader(ds, batch_size=2 * b)
    ranks = [loader(ds, batch_size=b, rank=r, world_size=2) for r in range(2)]
    for _ in range(steps):
        per_rank = [ids(r.next_batch()[0]) for r in ranks]
        assert not set(per_rank[0]) & set(per_rank[1])
        two_calls = ids(single.next_batch()[0]) + ids(single.next_batch()[0])
        one_call = ids(wide.next_batch()[0])
        assert sorted(per_rank[0] + per_rank[1]) == sorted(two_calls) == sorted(one_call)
        assert per_rank[0] == two_calls[0::2] and per_rank[1] == two_calls[1::2]  # r, r+W, r+2W, ...
    three = [loader(ds, batch_size=2, rank=r, world_size=3) for r in range(3)]
    six = loader(ds, batch_size=6)
    for _ in range(steps):
        assert sorted(sum((ids(r.next_batch()[0]) for r in three), [])) == sorted(ids(six.next_batch()[0]))


def test_exact_resume_across_epochs(ds):
    ref = loader(ds, batch_size=6, seed=1)
    for _ in range(11):
        ref.next_batch()
    state = pickle.loads(pickle.dumps(ref.state_dict()))
    assert state["cursor"] == 66 and state["epoch"] == 0
    expected = [ref.next_batch() for _ in range(5)]  # crosses into epoch 1 (73 samples per epoch)
    assert ref.epoch == 1
    new = loader(ds, batch_size=6, seed=1)
    new.load_state_dict(state)
    for x, y in expected:
        nx, ny = new.next_batch()
        assert torch.equal(nx, x) and torch.equal(ny, y)
    assert new.state_dict() == ref.state_dict()


def test_resume_with_another_world_size_continues_by_global_index(ds):
    one = loader(ds, batch_size=4, seed=2)
    for _ in range(7):
        one.next_batch()
    state = one.state_dict()
    following = ids(one.next_batch()[0]) + ids(one.next_batch()[0])  # the next 8 global samples
    ranks = [loader(ds, batch_size=2, seed=2, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.load_state_dict(state)
    got = [ids(r.next_batch()[0]) + ids(r.next_batch()[0]) for r in ranks]
    assert sorted(got[0] + got[1]) == sorted(following)
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()


def test_validation_order_is_fixed(ds):
    a = TokenLoader(ds, "val", seq_len=SEQ, batch_size=3, shuffle=False)
    seen = []
    for _ in range(5):
        seen += ids(a.next_batch()[0])
    n = (100 - 1) // SEQ
    assert seen == [i % n for i in range(15)]  # windows in order, wrapping after the last
    b = TokenLoader(ds, "val", seq_len=SEQ, batch_size=3, shuffle=False)
    assert ids(b.next_batch()[0]) == [0, 1, 2]


def test_windows_across_shard_boundaries(tmp_path, tok):
    ds = make_dataset(tmp_path / "small", tok, shard_sizes=(5, 3, 1, 20, 7))
    ld = loader(ds, batch_size=4, shuffle=False)
    for _ in range(3):
        ids(ld.next_batch()[0])  # every window is contiguous, even those that span 2-4 shards


def test_errors(ds, tmp_path, tok):
    with pytest.raises(DataError, match="not a prepared dataset"):
        TokenLoader(tmp_path / "nothing", "train", seq_len=SEQ, batch_size=1)
    with pytest.raises(DataError, match="split 'test' not in"):
        TokenLoader(ds, "test", seq_len=SEQ, batch_size=1)
    with pytest.raises(DataError, match="not enough for one sample"):
        TokenLoader(ds, "val", seq_len=100, batch_size=1)
    with pytest.raises(ValueError, match="rank=2"):
        loader(ds, rank=2, world_size=2)
    state = loader(ds).state_dict()
    with pytest.raises(DataError, match="seq_len"):
        TokenLoader(ds, "train", seq_len=SEQ * 2, batch_size=1).load_state_dict(state)
    with pytest.raises(DataError, match="seed"):
        loader(ds, seed=9).load_state_dict(state)


def test_detects_truncated_and_foreign_shards(tmp_path, tok):
    ds = make_dataset(tmp_path / "t", tok)
    shard = ds / "train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(DataError, match="truncated") as e:
        loader(ds)
    assert str(shard) in str(e.value)

    other = train_bpe(iter(["a different corpus entirely"] * 10), vocab_size=270, show_progress=False)
    ds2 = make_dataset(tmp_path / "u", tok)
    foreign = make_dataset(tmp_path / "v", other)
    (ds2 / "train_000000.bin").write_bytes((foreign / "train_000000.bin").read_bytes())  # copied over
    with pytest.raises(DataError, match="made by another tokenizer") as e:
        loader(ds2)
    assert "train_000000.bin" in str(e.value)

    meta = json.loads((ds2 / "meta.json").read_text())
    meta["splits"]["val"]["shards"][0]["tokens"] = 99
    (ds2 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json says 99"):
        TokenLoader(ds2, "val", seq_len=SEQ, batch_size=1)
    assert HEADER_BYTES == 64


def test_prefetch_thread_gives_the_same_stream(ds):
    """The background-thread path (used on CUDA) yields exactly the synchronous stream, also after a resume.
    Forced on here without a GPU (no pinning); the CUDA test below runs it for real."""
    sync = loader(ds, batch_size=5, seed=4)
    threaded = loader(ds, batch_size=5, seed=4)
    threaded._prefetch = 2
    for _ in range(6):
        assert torch.equal(sync.next_batch()[0], threaded.next_batch()[0])
    state = sync.state_dict()
    assert threaded.state_dict() == state  # the consumed position, not how far the thread ran ahead
    expected = [sync.next_batch()[0] for _ in range(4)]
    threaded.load_state_dict({**state, "cursor": 0})
    assert ids(threaded.next_batch()[0]) == ids(loader(ds, batch_size=5, seed=4).next_batch()[0])
    threaded.load_state_dict(state)
    assert all(torch.equal(threaded.next_batch()[0], e) for e in expected)
    threaded.close()
    assert threaded._thread is None


@pytest.mark.gpu
def test_cuda_prefetch(ds):
    ld = loader(ds, batch_size=5, seed=4, device="cuda")
    ref = loader(ds, batch_size=5, seed=4)
    for _ in range(8):
        x, y = ld.next_batch()
        rx, ry = ref.next_batch()
        assert x.is_cuda and y.is_cuda
        assert torch.equal(x.cpu(), rx) and torch.equal(y.cpu(), ry)
    ld.close()
