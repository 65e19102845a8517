"""Shard files: header round-trip, dtype choice, and detection of truncated, corrupt or foreign shards."""

import numpy as np
import pytest

from data.errors import DataError
from data.shards import HEADER_BYTES, MAGIC, ShardWriter, open_shard, read_header, token_dtype, write_shard

HASH_A = "ab" * 32
HASH_B = "cd" * 32


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_dtype_choice():
    assert token_dtype(2048) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert token_dtype(65537) == np.uint32
    assert token_dtype(200_000) == np.uint32


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_write_read_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    hi = np.iinfo(dtype).max
    tokens = rng.integers(0, hi, size=12345, endpoint=True).astype(dtype)
    path = tmp_path / "train_000000.bin"
    write_shard(path, tokens, n_docs=17, tokenizer_hash=HASH_A)
    header = read_header(path)
    assert (header.itemsize, header.n_tokens, header.n_docs) == (np.dtype(dtype).itemsize, 12345, 17)
    assert header.tok_hash == bytes.fromhex(HASH_A)[:16]
    assert path.stat().st_size == HEADER_BYTES + tokens.nbytes
    mm = open_shard(path, HASH_A)
    assert mm.dtype.itemsize == np.dtype(dtype).itemsize
    np.testing.assert_array_equal(np.asarray(mm), tokens)
    assert path.read_bytes()[:8] == MAGIC
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "s.bin", np.zeros(0, np.uint16), 0, HASH_A)
    assert len(open_shard(tmp_path / "s.bin", HASH_A)) == 0


def test_truncated_shard(tmp_path):
    path = tmp_path / "val_000000.bin"
    write_shard(path, np.arange(1000, dtype=np.uint16), 3, HASH_A)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(DataError) as e:
        open_shard(path, HASH_A)
    msg = _one_line(e)
    assert str(path) in msg and "truncated" in msg and "1000 tokens" in msg and "data.prepare" in msg
    path.write_bytes(data[:40])  # not even a whole header
    with pytest.raises(DataError, match="truncated"):
        read_header(path)


def test_corrupt_shards(tmp_path):
    path = tmp_path / "train_000001.bin"
    write_shard(path, np.arange(100, dtype=np.uint32), 1, HASH_A)
    good = path.read_bytes()
    path.write_bytes(good + b"\0\0\0\0")  # longer than the header says
    with pytest.raises(DataError, match="longer than its header says"):
        open_shard(path)
    path.write_bytes(b"GARBAGE!" + good[8:])
    with pytest.raises(DataError, match="not a token shard") as e:
        open_shard(path)
    assert str(path) in _one_line(e)
    path.write_bytes(good[:8] + (99).to_bytes(4, "little") + good[12:])
    with pytest.raises(DataError, match="format version 99"):
        open_shard(path)
    path.write_bytes(good[:12] + (3).to_bytes(4, "little") + good[16:])
    with pytest.raises(DataError, match="token size 3"):
        open_shard(path)
    with pytest.raises(DataError, match="missing"):
        open_shard(tmp_path / "nope.bin")


def test_foreign_tokenizer(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(10, dtype=np.uint16), 1, HASH_B)
    with pytest.raises(DataError, match="made by another tokenizer") as e:
        open_shard(path, HASH_A)
    assert str(path) in _one_line(e)
    assert len(open_shard(path, HASH_B)) == 10


def test_shard_writer_splits_and_counts_docs(tmp_path):
    w = ShardWriter(tmp_path, "train", shard_tokens=10, dtype=np.dtype(np.uint16), tokenizer_hash=HASH_A)
    stream = np.arange(37, dtype=np.uint16)
    doc_starts = [0, 4, 9, 10, 25, 36]  # global positions where documents start
    for lo, hi in [(0, 7), (7, 8), (8, 30), (30, 37)]:
        local = np.array([s - lo for s in doc_starts if lo <= s < hi], dtype=np.int64)
        w.add(stream[lo:hi], local)
    w.flush()
    assert [s["file"] for s in w.shards] == [f"train_{i:06d}.bin" for i in range(4)]
    assert [s["tokens"] for s in w.shards] == [10, 10, 10, 7]
    assert [s["docs"] for s in w.shards] == [3, 1, 1, 1]
    assert (w.n_tokens, w.n_docs) == (37, 6)
    got = np.concatenate([np.asarray(open_shard(tmp_path / s["file"], HASH_A)) for s in w.shards])
    np.testing.assert_array_equal(got, stream)
    assert [read_header(tmp_path / s["file"]).n_docs for s in w.shards] == [3, 1, 1, 1]
