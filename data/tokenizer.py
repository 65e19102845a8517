"""Tokenizers: train a byte-level BPE, or load a tokenizer.json or a hub tokenizer; one small wrapper type.

The wrapper fixes the two choices that make the data pipeline exact:
- special tokens are never parsed out of document text (a document that contains "<|endoftext|>" encodes it
  as ordinary bytes), so the only EOS ids in a shard are the separators that prepare inserts;
- decode keeps special tokens, so decode(encode(text)) == text for any text with a byte-level tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from common.files import write_bytes_atomic
from data.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the id of its end-of-text token."""

    def __init__(self, tk: tokenizers.Tokenizer, eos_token: str = "<|endoftext|>", source: str = "<memory>"):
        eos_id = tk.token_to_id(eos_token)
        if eos_id is None:
            raise DataError(
                f"tokenizer {source} has no end-of-text token {eos_token!r}; set data.eos_token to one of its "
                f"special tokens ({', '.join(sorted(t.content for t in tk.get_added_tokens_decoder().values()))})"
            )
        tk.encode_special_tokens = True  # document text never produces special-token ids
        self.tk = tk
        self.eos_token = eos_token
        self.eos_id: int = eos_id
        self.vocab_size: int = tk.get_vocab_size(with_added_tokens=True)
        self.hash: str = hashlib.sha256(tk.to_str().encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes many texts at once (parallel in the Rust library)."""
        return [e.ids for e in self.tk.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode(list(map(int, ids)), skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        """Writes tokenizer.json atomically; its sha256 is `self.hash`."""
        write_bytes_atomic(path, self.tk.to_str().encode())

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, hash={self.hash[:12]})"


def train_bpe(texts: Iterator[str], vocab_size: int, eos_token: str = "<|endoftext|>",
              length: int | None = None, show_progress: bool = True) -> Tokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization) learned from `texts`, with `eos_token` as special id 0.

    All 256 bytes are in the initial alphabet, so any UTF-8 text encodes, even bytes absent from `texts`.
    """
    if vocab_size < 257:
        raise DataError(f"data.vocab_size={vocab_size} is too small for a byte-level BPE; use at least 257")
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tk.train_from_iterator(texts, trainer=trainer, length=length)
    return Tokenizer(tk, eos_token, source="<trained bpe>")


def tokenizer_from_spec(spec: str, eos_token: str = "<|endoftext|>") -> Tokenizer:
    """Loads `spec`: a path to a tokenizer.json (or a directory holding one), else a hub tokenizer name."""
    path = Path(spec)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if path.exists() or spec.endswith(".json"):
        if not path.is_file():
            raise DataError(f"tokenizer file {path} not found; set data.tokenizer to a tokenizer.json or 'bpe'")
        try:
            tk = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on malformed JSON
            raise DataError(f"tokenizer file {path} could not be read ({e}); point data.tokenizer to a valid "
                            "tokenizer.json") from None
        return Tokenizer(tk, eos_token, source=str(path))
    try:
        tk = tokenizers.Tokenizer.from_pretrained(spec)
    except Exception as e:
        raise DataError(f"hub tokenizer {spec!r} could not be loaded ({type(e).__name__}: {str(e)[:200]}); "
                        "check the name and the network (HF_HUB_OFFLINE), or give a path to a tokenizer.json"
                        ) from None
    return Tokenizer(tk, eos_token, source=spec)


def load_tokenizer(dataset_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a prepared dataset, checked against the hash recorded in its meta.json."""
    dataset_dir = Path(dataset_dir)
    meta_path, tok_path = dataset_dir / META_FILE, dataset_dir / TOKENIZER_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: {dataset_dir} is not a prepared dataset; run "
                        "`python -m data.prepare data=NAME` first")
    meta = json.loads(meta_path.read_text())
    if not tok_path.is_file():
        raise DataError(f"{tok_path} is missing; delete {dataset_dir} and run `python -m data.prepare` again")
    data = tok_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["tokenizer_hash"]:
        raise DataError(f"{tok_path} is not the tokenizer the shards were made with (sha256 differs from "
                        f"{meta_path}); delete {dataset_dir} and run `python -m data.prepare` again")
    return Tokenizer(tokenizers.Tokenizer.from_str(data.decode()), meta["eos_token"], source=str(tok_path))


def dataset_vocab_size(dataset_dir: str | os.PathLike) -> int:
    """Vocabulary size of a prepared dataset (from meta.json; the model's embedding needs at least this)."""
    meta_path = Path(dataset_dir) / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: run `python -m data.prepare data=NAME` first")
    return int(json.loads(meta_path.read_text())["vocab_size"])
