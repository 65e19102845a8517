"""Token shards on disk: a 64-byte header followed by the raw token ids, read back as a numpy memmap.

Header layout (little-endian, 64 bytes):
    magic      8s   b"NSATOKS\\0"
    version    u32  1
    itemsize   u32  2 (uint16 ids, vocab <= 65536) or 4 (uint32 ids)
    n_tokens   u64  number of token ids that follow
    n_docs     u64  documents whose start (their EOS separator) is in this shard
    tok_hash   16s  first 16 bytes of the sha256 of the tokenizer that made the ids
    reserved   16s  zeros
A shard is valid only when the file size is exactly 64 + n_tokens * itemsize and the tokenizer hash matches
the dataset's meta.json: anything else is reported as corrupt or stale, never read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.files import atomic_write
from data.errors import DataError

MAGIC = b"NSATOKS\0"
VERSION = 1
HEADER_FMT = "<8sIIQQ16s16s"
HEADER_BYTES = struct.calcsize(HEADER_FMT)
assert HEADER_BYTES == 64


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


@dataclass(frozen=True)
class ShardHeader:
    itemsize: int
    n_tokens: int
    n_docs: int
    tok_hash: bytes  # 16 bytes

    def pack(self) -> bytes:
        return struct.pack(HEADER_FMT, MAGIC, VERSION, self.itemsize, self.n_tokens, self.n_docs,
                           self.tok_hash, b"\0" * 16)


def write_shard(path: str | os.PathLike, tokens: np.ndarray, n_docs: int, tokenizer_hash: str) -> None:
    """Writes `tokens` (1-D uint16/uint32) with its header to `path` atomically (temp file + os.replace)."""
    path = Path(path)
    tokens = np.ascontiguousarray(tokens)
    if tokens.ndim != 1 or tokens.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"shard tokens must be 1-D uint16 or uint32, got {tokens.dtype} {tokens.shape}")
    header = ShardHeader(tokens.dtype.itemsize, len(tokens), n_docs, bytes.fromhex(tokenizer_hash)[:16])
    with atomic_write(path) as f:
        f.write(header.pack())
        f.write(tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes())


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Parses and checks the header of `path` against the file's size; raises DataError naming the file."""
    path = Path(path)
    fix = "delete the dataset directory and run `python -m data.prepare` again"
    if not path.is_file():
        raise DataError(f"shard {path} is missing; {fix}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"shard {path} is truncated ({size} bytes, smaller than its {HEADER_BYTES}-byte "
                        f"header); {fix}")
    with open(path, "rb") as f:
        magic, version, itemsize, n_tokens, n_docs, tok_hash, _ = struct.unpack(HEADER_FMT, f.read(HEADER_BYTES))
    if magic != MAGIC:
        raise DataError(f"{path} is not a token shard (bad magic {magic!r}); {fix}")
    if version != VERSION:
        raise DataError(f"shard {path} has format version {version}, this code reads {VERSION}; {fix}")
    if itemsize not in (2, 4):
        raise DataError(f"shard {path} is corrupt (token size {itemsize} bytes in header); {fix}")
    expected = HEADER_BYTES + n_tokens * itemsize
    if size != expected:
        what = "truncated" if size < expected else "corrupt (longer than its header says)"
        raise DataError(f"shard {path} is {what}: header says {n_tokens} tokens = {expected} bytes, file has "
                        f"{size}; {fix}")
    return ShardHeader(itemsize, n_tokens, n_docs, tok_hash)


def open_shard(path: str | os.PathLike, tokenizer_hash: str | None = None) -> np.memmap:
    """Read-only memmap of the shard's token ids, after checking its header (and tokenizer hash if given)."""
    header = read_header(path)
    if tokenizer_hash is not None and header.tok_hash != bytes.fromhex(tokenizer_hash)[:16]:
        raise DataError(f"shard {path} was made by another tokenizer (hash {header.tok_hash.hex()} != "
                        f"{tokenizer_hash[:32]} in meta.json); delete its dataset directory and run "
                        "`python -m data.prepare` again")
    dtype = np.dtype("<u2" if header.itemsize == 2 else "<u4")
    if header.n_tokens == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(header.n_tokens,))


class ShardWriter:
    """Streams token chunks of one split into fixed-size shards `<split>_NNNNNN.bin` in `out_dir`."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, dtype: np.dtype, tokenizer_hash: str):
        self.out_dir, self.split, self.dtype, self.tokenizer_hash = out_dir, split, dtype, tokenizer_hash
        self.buf = np.empty(shard_tokens, dtype=dtype)
        self.fill = 0  # tokens in buf
        self.docs_in_buf = 0
        self.shards: list[dict] = []  # {"file", "tokens", "docs"} of the shards written so far
        self.n_tokens = self.n_docs = 0

    def add(self, tokens: np.ndarray, doc_starts: np.ndarray) -> None:
        """Appends `tokens`; `doc_starts` are the positions (in `tokens`) where documents begin."""
        pos = 0
        while pos < len(tokens):
            take = min(len(self.buf) - self.fill, len(tokens) - pos)
            self.buf[self.fill:self.fill + take] = tokens[pos:pos + take]
            self.docs_in_buf += int(np.count_nonzero((doc_starts >= pos) & (doc_starts < pos + take)))
            self.fill += take
            pos += take
            if self.fill == len(self.buf):
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        name = f"{self.split}_{len(self.shards):06d}.bin"
        write_shard(self.out_dir / name, self.buf[:self.fill], self.docs_in_buf, self.tokenizer_hash)
        self.shards.append({"file": name, "tokens": self.fill, "docs": self.docs_in_buf})
        self.n_tokens += self.fill
        self.n_docs += self.docs_in_buf
        self.fill = self.docs_in_buf = 0
