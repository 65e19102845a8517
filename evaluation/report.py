"""results.json and summary.md: rewritten (atomically) after every task, so a crash loses nothing finished."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.files import write_text_atomic


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


META_KEYS = ("model", "checkpoint", "step", "tokens", "seed", "max_length", "sparsity", "throughput")


def summary_markdown(results: dict[str, Any]) -> str:
    """One table per task (metric | value), after a header naming the model and checkpoint."""
    model = results.get("model", {})
    out = [
        f"# Evaluation of {model.get('name', '?')} ({model.get('attention', '?')} attention)",
        "",
        f"- checkpoint: `{results.get('checkpoint')}` (step {results.get('step')}, {results.get('tokens')} tokens)",
        f"- max length: {results.get('max_length')} (trained at {model.get('train_length')}), "
        f"seed {results.get('seed')}",
    ]
    for n, s in (results.get("sparsity") or {}).items():
        if isinstance(s, dict):
            out.append(f"- attention at {n} tokens: {s['keys_per_query']['total']:.1f} keys per query, "
                       f"{s['fraction']:.1%} of full causal attention")
    tp = results.get("throughput")
    if tp:
        out.append(f"- throughput: prefill {tp['prefill_tok_s']:.0f} tok/s, decode {tp['decode_tok_s']:.0f} tok/s")
    for task, metrics in results.items():
        if task in META_KEYS or not isinstance(metrics, dict):
            continue
        out += ["", f"## {task}", "", markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()])]
    return "\n".join(out) + "\n"


def grid_markdown(grid: list[list[float | None]], depths: list[float], lengths: list[int]) -> str:
    """A depth x length accuracy table (rows: depth %, columns: length)."""
    rows = [[f"{d:g}%", *("-" if v is None else f"{v:.2f}" for v in row)] for d, row in zip(depths, grid)]
    return markdown_table(["depth \\ length", *map(str, lengths)], rows)


class Results:
    """The results of one eval run: meta keys + {task: {metric: value}}; saved after every change."""

    def __init__(self, out_dir: Path, meta: dict[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.data: dict[str, Any] = dict(meta)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        write_json_atomic(self.out_dir / "results.json", self.data)
        write_text_atomic(self.out_dir / "summary.md", summary_markdown(self.data))
