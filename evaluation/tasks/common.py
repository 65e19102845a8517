"""What every task receives (`EvalContext`) and small helpers shared by the grid tasks."""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.files import write_text_atomic
from data.tokenizer import Tokenizer
from evaluation.config import EvalConfig
from evaluation.generation import Throughput, greedy_generate
from evaluation.loading import Loaded
from model import GPT

log = logging.getLogger("eval")


@dataclass
class EvalContext:
    loaded: Loaded
    cfg: EvalConfig
    out_dir: Path
    max_length: int  # longest context evaluated (prompt + generation)
    stats: Throughput = field(default_factory=Throughput)

    @property
    def model(self) -> GPT:
        return self.loaded.model

    @property
    def tok(self) -> Tokenizer:
        return self.loaded.tokenizer

    def task_dir(self, task: str) -> Path:
        path = self.out_dir / task
        path.mkdir(parents=True, exist_ok=True)
        return path

    def seed_for(self, *parts: Any) -> int:
        """A stable per-sample seed from the run seed and the sample's coordinates (same on every machine)."""
        return zlib.crc32(repr((self.cfg.seed, *parts)).encode())

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, stop_ids: Sequence[int] | None = None,
                 min_new_tokens: int = 0, desc: str | None = None,
                 on_prefill: Callable[[list[int]], None] | None = None) -> list[list[int]]:
        """Greedy continuations (stopping at EOS by default), batched by equal prompt length (on_prefill: see
        greedy_generate)."""
        return greedy_generate(
            self.model, prompts, max_new_tokens,
            stop_ids=[self.tok.eos_id] if stop_ids is None else stop_ids,
            min_new_tokens=min_new_tokens, batch_size=self.cfg.eval.batch_size,
            autocast=self.loaded.autocast, stats=self.stats, desc=desc, on_prefill=on_prefill,
        )

    def grid_lengths(self, configured: list[int] | None, task: str) -> list[int]:
        """The lengths a grid task runs: configured ones up to eval.max_length (others skipped with a warning),
        default 1/4, 1/2, 3/4 and 1 x eval.max_length."""
        if configured is None:
            return sorted({max(1, self.max_length * k // 4) for k in (1, 2, 3, 4)})
        over = [n for n in configured if n > self.max_length]
        if over:
            log.warning(f"{task}: lengths {over} exceed eval.max_length={self.max_length} and are skipped; "
                        "raise eval.max_length to evaluate them")
        return sorted({n for n in configured if n <= self.max_length})


_FIRST_WORD = re.compile(r"\s*(\S+)")


def exact_match(prediction: str, expected: str) -> bool:
    """The prediction's first whitespace-separated word, without trailing punctuation, is the expected answer."""
    m = _FIRST_WORD.match(prediction)
    return m is not None and m.group(1).rstrip(".,;:!?\"')") == expected.strip()


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
