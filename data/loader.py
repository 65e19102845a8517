"""TokenLoader: deterministic, resumable, rank-sharded batches of token windows from memory-mapped shards.

The global stream. A split's shards are one token sequence of N tokens, cut into S = (N - 1) // seq_len
samples: sample i is tokens[i*seq_len : i*seq_len + seq_len + 1] (consecutive samples share one token, so
every token but the first is a target exactly once per epoch). Epoch e visits the samples in the order of a
permutation that is a pure function of (seed, epoch) (identity when shuffle=False). Global sample g is
sample perm_e[g % S] of epoch e = g // S: one infinite, fixed stream.

Ranks. Each call to next_batch consumes the next batch_size * world_size global samples; rank r takes
g = cursor + r, cursor + r + W, ..., so the union over ranks of one step is a contiguous block of the global
stream whatever the world size: 2 ranks x batch b == 1 rank x 2 calls of batch b (same samples, same set).

State. state_dict() is the global sample cursor (+ epoch, for reading), identical on every rank. Loading it
into a loader with another world size or batch size continues at the same global sample index: nothing is
repeated or skipped across the resume (if the new batch * world does not divide the old position, the new
blocks simply start from where the old ones ended).

Long-context mix. With `mix` (MixConfig, rate > 0), global sample g is replaced, when a hash of (seed, g)
falls below rate, by a synthetic document (data/synthetic.py) of the same length, seeded from (seed, g):
deterministic and independent of world size like the rest.

On CUDA a background thread builds the next batches into pinned memory and next_batch copies them with
non_blocking=True; on CPU batches are built synchronously.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np
import torch

from data.config import MixConfig, as_mix_config
from data.errors import DataError
from data.shards import open_shard
from data.synthetic import GENERATORS, generate
from data.tokenizer import META_FILE, load_tokenizer

_U64 = np.uint64
_MASK = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a bijection of uint64 that scrambles bits (vectorized, wraps mod 2**64)."""
    x = np.asarray(x, dtype=_U64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def _unit(key: int) -> float:
    """A 64-bit key as a uniform number in [0, 1) (its top 53 bits)."""
    return (key >> 11) / float(1 << 53)


def _key(*parts: int) -> int:
    """A 64-bit key from small integers (seed, epoch, purpose...)."""
    k = 0x9E3779B97F4A7C15
    for p in parts:
        k = int(mix64(np.array([(k ^ (p & _MASK)) & _MASK], dtype=_U64))[0])
    return k


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of range(n), a pure function of (seed, epoch), stable across numpy versions."""
    with np.errstate(over="ignore"):
        scores = mix64(np.arange(n, dtype=_U64) + _U64(_key(seed, epoch)))
    return np.argsort(scores, kind="stable")


class TokenLoader:
    """Batches (x, y), int64 [batch_size, seq_len] on `device`, y = x shifted left by one token."""

    def __init__(self, dataset_dir, split: str, *, seq_len: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: str | torch.device = "cpu", shuffle: bool = True,
                 mix: MixConfig | None = None, prefetch: int = 2):
        if seq_len < 1 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad loader shape: seq_len={seq_len} batch_size={batch_size} rank={rank} "
                             f"world_size={world_size}")
        self.dir = Path(dataset_dir)
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.device = torch.device(device)

        meta_path = self.dir / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{meta_path} not found: {self.dir} is not a prepared dataset; run "
                            "`python -m data.prepare data=NAME` first")
        self.meta = json.loads(meta_path.read_text())
        if split not in self.meta["splits"]:
            raise DataError(f"split {split!r} not in {meta_path} (has {', '.join(self.meta['splits'])})")
        self.shards = []
        for s in self.meta["splits"][split]["shards"]:
            mm = open_shard(self.dir / s["file"], self.meta["tokenizer_hash"])
            if len(mm) != s["tokens"]:
                raise DataError(f"shard {self.dir / s['file']} has {len(mm)} tokens, {meta_path} says "
                                f"{s['tokens']}; delete {self.dir} and run `python -m data.prepare` again")
            self.shards.append(mm)
        sizes = np.array([len(m) for m in self.shards], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(sizes)])
        self.n_tokens = int(self.shard_starts[-1])
        self.samples_per_epoch = (self.n_tokens - 1) // seq_len
        if self.samples_per_epoch < 1:
            raise DataError(f"split {split!r} of {self.dir} has {self.n_tokens} tokens, not enough for one "
                            f"sample of seq_len+1={seq_len + 1}; lower seq_len or prepare more data "
                            "(data.max_tokens, data.val_fraction)")

        self.mix = as_mix_config(mix)
        self.tokenizer = None
        if self.mix is not None:
            bad = [k for k in self.mix.kinds if k not in GENERATORS]
            if bad or not self.mix.kinds:
                raise DataError(f"data.mix.kinds={self.mix.kinds} has unknown kinds {bad}; choose from "
                                f"{', '.join(GENERATORS)}")
            if not 0.0 <= self.mix.filler <= 1.0:
                raise DataError(f"data.mix.filler={self.mix.filler} must be a fraction in [0, 1]")
            if self.mix.length is not None and not 2 <= self.mix.length <= seq_len + 1:
                raise DataError(f"data.mix.length={self.mix.length} must be in [2, seq_len+1={seq_len + 1}]")
            region = self.mix.length or seq_len + 1
            if self.mix.min_length is not None and not 2 <= self.mix.min_length <= region:
                raise DataError(f"data.mix.min_length={self.mix.min_length} must be in [2, data.mix.length or "
                                f"seq_len+1 = {region}], or null for one document per chosen sample")
            shortest = self.mix.min_length or region
            self.tokenizer = load_tokenizer(self.dir)
            for kind in self.mix.kinds:  # fail now, not mid-training, if a kind does not fit
                try:  # (a rare draw that still does not fit later keeps its real tokens)
                    for s in range(4):
                        generate(kind, self.tokenizer, shortest - 1, seed=s)
                except ValueError as e:
                    raise DataError(f"synthetic {kind!r} does not fit in {shortest} tokens ({e}): raise "
                                    "data.mix.min_length (or data.mix.length / seq_len), or drop "
                                    f"{kind!r} from data.mix.kinds") from None
            self._mix_key = _key(seed, 0x5EED)

        self.cursor = 0  # global sample index of the next global batch
        self._perms: dict[int, np.ndarray] = {}
        self._pin = self.device.type == "cuda"
        self._prefetch = prefetch if self._pin else 0  # batches built ahead by a thread (CUDA only)
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    # --- the global stream ------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self.cursor // self.samples_per_epoch

    def _sample_id(self, g: int) -> int:
        """Which sample (window index) global sample g is."""
        epoch, j = divmod(g, self.samples_per_epoch)
        if not self.shuffle:
            return j
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            perm = self._perms[epoch] = epoch_permutation(self.samples_per_epoch, self.seed, epoch)
        return int(perm[j])

    def _read(self, start: int, out: np.ndarray) -> None:
        """out[:] = tokens[start : start + len(out)] of the concatenated shards."""
        pos, n = start, len(out)
        filled = 0
        i = int(np.searchsorted(self.shard_starts, pos, side="right")) - 1
        while filled < n:
            lo = pos - int(self.shard_starts[i])
            take = min(n - filled, len(self.shards[i]) - lo)
            out[filled:filled + take] = self.shards[i][lo:lo + take]
            filled += take
            pos += take
            i += 1

    def _global_sample(self, g: int, out: np.ndarray) -> None:
        """out[:] = the seq_len + 1 tokens of global sample g (real or synthetic)."""
        self._read(self._sample_id(g) * self.seq_len, out)
        if self.mix is not None:
            self._maybe_synthetic(g, out)

    def _maybe_synthetic(self, g: int, out: np.ndarray) -> None:
        h = int(mix64(np.array([self._mix_key ^ g], dtype=_U64))[0])
        if _unit(h) >= self.mix.rate:
            return
        eos = self.tokenizer.eos_id
        haystack = out[out != eos].tolist() or None  # the real text this sample replaces, for needles in real text
        region = self.mix.length or len(out)
        for j, (start, n) in enumerate(self._doc_spans(g, region)):
            kind = self.mix.kinds[((_key(h, j) if j else h) & 0xFFFF) % len(self.mix.kinds)]
            in_filler = self.mix.filler and _unit(_key(h, j, 0xF1)) < self.mix.filler
            try:
                doc = generate(kind, self.tokenizer, n - 1, seed=_key(self.seed, g, j) & 0x7FFFFFFF,
                               haystack=None if in_filler else haystack)
            except ValueError:  # this draw's pieces encode longer than n allows: keep the real tokens there
                continue
            at = len(out) - region + start
            out[at] = eos  # a document boundary, as prepare puts before every document
            out[at + 1:at + n] = doc.tokens

    def _doc_spans(self, g: int, region: int) -> list[tuple[int, int]]:
        """(start, length) of the synthetic documents (eos included) that fill `region` tokens of sample g."""
        lo = self.mix.min_length
        if lo is None:
            return [(0, region)]
        rng = np.random.default_rng(_key(self.seed, g, 0xD0C5))
        spans, start = [], 0
        while region - start > 0:
            left = region - start
            n = left if left < 2 * lo else int(np.exp(rng.uniform(np.log(lo), np.log(left))))
            n = left if left - n < lo else n  # no piece shorter than min_length at the end
            spans.append((start, n))
            start += n
        return spans

    def _build(self, cursor: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for k in range(self.batch_size):
            self._global_sample(cursor + self.rank + k * self.world_size, rows[k])
        t = torch.from_numpy(rows)
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        if self._pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    # --- public API ---------------------------------------------------------------------------------------

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), each int64 [batch_size, seq_len] on self.device."""
        if self._prefetch:
            if self._thread is None:
                self._start_thread()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._thread = None
                raise item
            cursor, x, y = item
            assert cursor == self.cursor, "prefetch out of step"
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        else:
            x, y = self._build(self.cursor)
            if self.device.type != "cpu":
                x, y = x.to(self.device), y.to(self.device)
        self.cursor += self.batch_size * self.world_size
        return x, y

    def state_dict(self) -> dict:
        """Small and picklable; the same on every rank. `cursor` is the global sample index to continue at."""
        return {"version": 1, "cursor": self.cursor, "epoch": self.epoch, "split": self.split,
                "seq_len": self.seq_len, "samples_per_epoch": self.samples_per_epoch, "seed": self.seed,
                "shuffle": self.shuffle, "tokenizer_hash": self.meta["tokenizer_hash"]}

    def load_state_dict(self, state: dict) -> None:
        """Continue at state["cursor"] (any world size / batch size; same data, seq_len, seed and order)."""
        mine = self.state_dict()
        for key in ("split", "seq_len", "samples_per_epoch", "seed", "shuffle", "tokenizer_hash"):
            if state.get(key) != mine[key]:
                raise DataError(f"loader state has {key}={state.get(key)!r} but this loader has {mine[key]!r}; "
                                f"resume with the same data and data settings ({key}) as the checkpoint")
        self._stop_thread()
        self.cursor = int(state["cursor"])

    def close(self) -> None:
        """Stops the prefetch thread (if any)."""
        self._stop_thread()

    def __del__(self):
        try:
            self._stop_thread()
        except Exception:
            pass

    # --- prefetch thread (CUDA only) ------------------------------------------------------------------------

    def _start_thread(self) -> None:
        # The thread pins memory: bind it to this rank's GPU, or CUDA would open a context on GPU 0 for it.
        if self._pin:
            self._cuda_index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self._prefetch)
        self._thread = threading.Thread(target=self._produce, args=(self.cursor, self._stop, self._queue),
                                        daemon=True, name="TokenLoader-prefetch")
        self._thread.start()

    def _produce(self, cursor: int, stop: threading.Event, q: queue.Queue) -> None:
        try:
            if self._pin:
                torch.cuda.set_device(self._cuda_index)
            while not stop.is_set():
                item = (cursor, *self._build(cursor))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                cursor += self.batch_size * self.world_size
        except BaseException as e:  # surfaced by next_batch
            q.put(e)

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)  # unblock a producer waiting on a full queue
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
        self._thread = self._queue = None
