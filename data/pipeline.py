"""prepare(): source documents -> tokenizer -> train/val token shards + meta.json, in <root>/<name>/.

The command line is data/prepare.py (`python -m data.prepare data=NAME`). Steps, in one pass over the
source in its own order:
1. resolve the source (local files by glob, or a hub dataset) and fingerprint it;
2. if <root>/<name>/meta.json records the same fingerprint, settings and tokenizer, and every shard checks
   out, reuse it (idempotent);
3. otherwise build in a temporary sibling directory: tokenizer (train a byte-level BPE on the train documents,
   or load one), tokenize batches of documents (datasets.map with num_proc processes, or batched encode while
   streaming) with an EOS before every document, split by document into train/val, stop at max_tokens,
   write fixed-size shards (each atomically), meta.json last; then swap the directory into place.
An interrupted prepare leaves only the temporary directory (removed by the next run), never a shard or a
meta.json the loader would read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from common.files import write_bytes_atomic
from data.config import DataConfig, as_data_config
from data.errors import DataError
from data.shards import ShardWriter, read_header, token_dtype
from data.sources import is_local, is_val_doc, load_source, resolve_files, source_fingerprint
from data.tokenizer import META_FILE, TOKENIZER_FILE, Tokenizer, tokenizer_from_spec, train_bpe

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# DataConfig fields that do not change the prepared bytes (where, how fast, or used only by the loader).
_NOT_OUTPUT = {"name", "root", "num_proc", "batch_docs", "cache_dir", "streaming", "mix"}


def dataset_dir(cfg: DataConfig) -> Path:
    """Where `prepare(cfg)` puts its output: <root>/<name>."""
    cfg = as_data_config(cfg)
    return Path(cfg.root).expanduser() / cfg.name


def prepare(cfg: DataConfig) -> Path:
    """Prepares the dataset described by `cfg` (idempotent) and returns its directory.

    The directory holds tokenizer.json, meta.json and the shards train_NNNNNN.bin / val_NNNNNN.bin.
    """
    cfg = as_data_config(cfg)
    _check_config(cfg)
    out = dataset_dir(cfg)
    files = resolve_files(cfg) if is_local(cfg) else None
    fingerprint = source_fingerprint(cfg, files)
    settings = _output_settings(cfg)
    given_tok = None if cfg.tokenizer == "bpe" else tokenizer_from_spec(cfg.tokenizer, cfg.eos_token)
    reason = _stale_reason(out, fingerprint, settings, given_tok)
    if reason is None:
        log.info(f"data: reusing {out} (up to date)")
        return out
    log.info(f"data: preparing {out} ({reason})")

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        t0 = time.time()
        meta = _build(cfg, files, fingerprint, settings, given_tok, tmp)
        shutil.rmtree(tmp / "_hf_cache", ignore_errors=True)
        meta["seconds"] = round(time.time() - t0, 2)
        write_bytes_atomic(tmp / META_FILE, json.dumps(meta, indent=1).encode())  # meta.json last
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    log.info(f"data: wrote {out}: train {tr['tokens']:,} tokens / {tr['docs']:,} docs, val {va['tokens']:,} "
             f"tokens / {va['docs']:,} docs, vocab {meta['vocab_size']}, {meta['seconds']} s")
    return out


# ----------------------------------------------------------------------------------------------------------
# up-to-date check


def _check_config(cfg: DataConfig) -> None:
    if not 0 <= cfg.val_fraction < 1:
        raise DataError(f"data.val_fraction={cfg.val_fraction} must be in [0, 1)")
    for key in ("max_tokens", "val_max_tokens"):
        v = getattr(cfg, key)
        if v is not None and v <= 0:
            raise DataError(f"data.{key}={v} must be positive (or null for no budget)")
    if cfg.shard_tokens <= 0 or cfg.batch_docs <= 0:
        raise DataError("data.shard_tokens and data.batch_docs must be positive")
    if cfg.val_split is not None and is_local(cfg):
        raise DataError(f"data.val_split={cfg.val_split!r} needs a hub dataset; local files are split by "
                        "data.val_fraction (set data.val_split=null)")


def _output_settings(cfg: DataConfig) -> dict:
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_OUTPUT}
    settings["format_version"] = FORMAT_VERSION
    return settings


def _stale_reason(out: Path, fingerprint: str, settings: dict, given_tok: Tokenizer | None) -> str | None:
    """None when `out` is a complete, valid preparation of exactly this; else why it must be rebuilt."""
    meta_path = out / META_FILE
    if not meta_path.is_file():
        return "not prepared yet"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return f"{meta_path} is unreadable"
    if meta.get("source_fingerprint") != fingerprint:
        return "the source files changed"
    if meta.get("settings") != settings:
        changed = sorted(k for k in settings if meta.get("settings", {}).get(k) != settings[k])
        return f"settings changed: {', '.join(changed)}"
    if given_tok is not None and meta.get("tokenizer_hash") != given_tok.hash:
        return "the tokenizer changed"
    try:
        from data.tokenizer import load_tokenizer

        load_tokenizer(out)
        for split in ("train", "val"):
            for shard in meta["splits"][split]["shards"]:
                if read_header(out / shard["file"]).n_tokens != shard["tokens"]:
                    return f"shard {shard['file']} does not match meta.json"
    except (DataError, KeyError) as e:
        return f"existing data is damaged: {e}"
    return None


def _remove_leftovers(out: Path) -> None:
    """Temporary directories of interrupted runs (of a process that no longer exists)."""
    for p in out.parent.glob(f".{out.name}.*-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# build


def _build(cfg: DataConfig, files, fingerprint: str, settings: dict, given_tok: Tokenizer | None,
           tmp: Path) -> dict:
    scratch_cache = str(tmp / "_hf_cache") if files is not None else None  # local files: nothing kept
    ds = load_source(cfg, cfg.split, files, scratch_cache)
    if given_tok is not None:
        tok = given_tok
    else:
        log.info(f"data: training a byte-level BPE (vocab {cfg.vocab_size}) on {cfg.tokenizer_train_chars:,} "
                 "characters of train documents")
        tok = train_bpe(_train_texts(ds, cfg), cfg.vocab_size, cfg.eos_token)
    tok.save(tmp / TOKENIZER_FILE)

    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(tmp, s, cfg.shard_tokens, dtype, tok.hash) for s in ("train", "val")}
    split_fraction = cfg.val_fraction if cfg.val_split is None else 0.0
    source_docs, hit_budget = _tokenize_source(ds, tok, cfg, writers, split_fraction, cfg.max_tokens, tmp)
    if cfg.val_split is not None:
        vds = load_source(cfg, cfg.val_split, files, scratch_cache)
        only_val = {"train": writers["val"], "val": writers["val"]}
        _tokenize_source(vds, tok, cfg, only_val, 0.0, cfg.val_max_tokens, tmp)
    for w in writers.values():
        w.flush()

    source_name = cfg.path if files is None else f"{cfg.path}:{len(files)} files"
    if writers["train"].n_tokens == 0:
        raise DataError(f"the source {source_name} gave no training tokens ({source_docs} documents); check "
                        "data.data_files / data.split, or lower data.val_fraction")
    if writers["train"].n_tokens == writers["train"].n_docs:
        raise DataError(f"the source {source_name} has only empty documents (field {cfg.text_field!r}); "
                        "check data.text_field")
    return {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"path": cfg.path, "config_name": cfg.config_name, "split": cfg.split,
                   "val_split": cfg.val_split, "files": len(files) if files is not None else None,
                   "documents_read": source_docs, "stopped_at_max_tokens": hit_budget},
        "source_fingerprint": fingerprint,
        "settings": settings,
        "tokenizer": cfg.tokenizer,
        "tokenizer_hash": tok.hash,
        "vocab_size": tok.vocab_size,
        "eos_token": tok.eos_token,
        "eos_id": tok.eos_id,
        "dtype": dtype.name,
        "splits": {s: {"tokens": w.n_tokens, "docs": w.n_docs, "shards": w.shards} for s, w in writers.items()},
    }


def _text_batches(ds, cfg: DataConfig) -> Iterator[list[str]]:
    """Batches of document texts in source order (None becomes "")."""
    for batch in ds.select_columns([cfg.text_field]).iter(batch_size=cfg.batch_docs):
        yield [t or "" for t in batch[cfg.text_field]]


def _train_texts(ds, cfg: DataConfig) -> Iterator[str]:
    """The first tokenizer_train_chars characters of the train documents (val documents are never seen)."""
    budget, index = cfg.tokenizer_train_chars, 0
    for texts in _text_batches(ds, cfg):
        is_val = is_val_doc(np.arange(index, index + len(texts)), cfg.val_fraction if cfg.val_split is None else 0)
        index += len(texts)
        for text, val in zip(texts, is_val):
            if val or not text:
                continue
            yield text[:budget]
            budget -= min(len(text), budget)
            if budget == 0:
                return


class _Router:
    """Sends tokenized documents, in order, to the train/val writers until the token budget is used up."""

    def __init__(self, writers: dict[str, ShardWriter], val_fraction: float, budget: int | None):
        self.writers, self.val_fraction, self.budget = writers, val_fraction, budget
        self.docs = 0  # documents seen (index of the next one)
        self.tokens = 0
        self.done = False
        self.bar = tqdm(total=budget, unit="tok", unit_scale=True, desc="writing shards")

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """`flat`: the concatenated token ids of len(lengths) documents, each starting with EOS."""
        if self.done or len(lengths) == 0:
            return
        if self.budget is not None and self.tokens + len(flat) >= self.budget:
            keep = self.budget - self.tokens
            starts = np.cumsum(lengths) - lengths
            n_docs = int(np.searchsorted(starts, keep, side="left"))  # documents that start before the cut
            lengths = lengths[:n_docs].copy()
            lengths[-1] -= int(starts[n_docs - 1] + lengths[-1] - keep)
            flat = flat[:keep]
            self.done = True
        is_val = is_val_doc(np.arange(self.docs, self.docs + len(lengths)), self.val_fraction)
        tok_is_val = np.repeat(is_val, lengths)
        for split, doc_mask, tok_mask in (("train", ~is_val, ~tok_is_val), ("val", is_val, tok_is_val)):
            if doc_mask.any():
                lens = lengths[doc_mask]
                self.writers[split].add(flat[tok_mask], np.cumsum(lens) - lens)
        self.docs += len(lengths)
        self.tokens += len(flat)
        self.bar.update(len(flat))

    def close(self) -> None:
        self.bar.close()


def _tokenize_source(ds, tok: Tokenizer, cfg: DataConfig, writers: dict[str, ShardWriter], val_fraction: float,
                     budget: int | None, tmp: Path) -> tuple[int, bool]:
    """Tokenizes `ds` into the writers; returns (documents read, whether the budget stopped it)."""
    router = _Router(writers, val_fraction, budget)
    try:
        if cfg.streaming:
            _tokenize_streaming(ds, tok, cfg, router)
        else:
            _tokenize_mapped(ds, tok, cfg, router, tmp)
    finally:
        router.close()
    if router.docs == 0:
        raise DataError(f"the source {cfg.path!r} (split {cfg.split!r}) is empty: 0 documents; check "
                        "data.data_files / data.split")
    return router.docs, router.done


def _with_eos(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [[tok.eos_id] + ids for ids in tok.encode_batch(texts)]


def _tokenize_streaming(ds, tok: Tokenizer, cfg: DataConfig, router: _Router) -> None:
    """Streaming source: batched encode (parallel in the Rust tokenizer) until the budget or the end."""
    dtype = token_dtype(tok.vocab_size)
    for texts in _text_batches(ds, cfg):
        docs = _with_eos(tok, texts)
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=dtype, count=int(lengths.sum()))
        router.add(flat, lengths)
        if router.done:
            return


def _tokenize_batch(batch: dict, tok: Tokenizer, text_field: str) -> dict:
    return {"ids": _with_eos(tok, [t or "" for t in batch[text_field]])}


def _tokenize_mapped(ds, tok: Tokenizer, cfg: DataConfig, router: _Router, tmp: Path) -> None:
    """Map-style source: datasets.map over ranges of documents with num_proc processes.

    With a budget, the first range is sized from a chars-per-token estimate on the first documents (so a
    budget of 1% of a huge dataset tokenizes about 1% of it); more ranges follow if it falls short.
    """
    import datasets
    import pyarrow.compute as pc

    n_docs = len(ds)
    if n_docs == 0:
        return
    dtype = token_dtype(tok.vocab_size)
    list_type = getattr(datasets, "List", None) or datasets.Sequence
    features = datasets.Features({"ids": list_type(datasets.Value(dtype.name))})
    num_proc = cfg.num_proc or os.cpu_count() or 1
    text = ds.select_columns([cfg.text_field])
    chars = None
    if router.budget is not None:
        col = text.data.column(cfg.text_field)
        chars = np.cumsum(pc.fill_null(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False)).astype(np.float64)
        chars = chars + np.arange(1, n_docs + 1)  # + one EOS per document, in "characters" (slightly high)
        sample = text.select(range(min(n_docs, 64)))[cfg.text_field]
        n_chars = sum(len(t or "") for t in sample)
        n_tok = sum(len(ids) for ids in _with_eos(tok, sample))
        chars_per_token = max(n_chars / max(n_tok, 1), 1.0)

    start, part = 0, 0
    while start < n_docs and not router.done:
        if chars is None:
            end = n_docs
        else:  # documents expected to hold the remaining budget, with a 10% margin
            want = (router.budget - router.tokens) * chars_per_token * 1.1
            base = chars[start - 1] if start else 0.0
            end = int(np.searchsorted(chars, base + want, side="left")) + 1
            end = min(n_docs, max(end, start + cfg.batch_docs))
        procs = min(num_proc, math.ceil((end - start) / cfg.batch_docs))
        with _single_threaded_tokenizers(procs > 1):
            mapped = text.select(range(start, end)).map(
                _tokenize_batch, fn_kwargs={"tok": tok, "text_field": cfg.text_field}, batched=True,
                batch_size=cfg.batch_docs, num_proc=procs if procs > 1 else None,
                remove_columns=[cfg.text_field], features=features,
                cache_file_name=str(tmp / "_map" / f"part{part}.arrow"),
                new_fingerprint=f"{tok.hash[:16]}-{start}-{end}", load_from_cache_file=False,
                desc=f"tokenizing documents {start:,}-{end:,}")
        for record_batch in mapped.data.to_batches():
            ids = record_batch.column("ids")
            lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
            router.add(ids.flatten().to_numpy(zero_copy_only=False), lengths)
            if router.done:
                break
        del mapped
        shutil.rmtree(tmp / "_map", ignore_errors=True)
        start, part = end, part + 1


@contextlib.contextmanager
def _single_threaded_tokenizers(forking: bool):
    """TOKENIZERS_PARALLELISM=false while datasets forks workers: each worker then encodes on one thread
    (num_proc is the parallelism), and the library does not warn about a fork after its pool was used."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if forking:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if forking and before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        elif forking:
            os.environ["TOKENIZERS_PARALLELISM"] = before
