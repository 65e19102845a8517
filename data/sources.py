"""Where documents come from: any `datasets` source, local files by glob or a hub dataset, checked early.

A source is what `datasets.load_dataset` accepts: a packaged builder for local files ("text", "json",
"parquet", "csv", "arrow") with `data_files`, or a hub dataset name (+ config, split, revision), optionally
streamed. Local globs are resolved here, not by `datasets`, so that a missing file is reported with its
pattern, excludes apply, and the source fingerprint (paths, sizes, mtimes) is cheap to compute.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os

from data.config import DataConfig
from data.errors import DataError

LOCAL_BUILDERS = ("text", "json", "parquet", "csv", "arrow")


def is_local(cfg: DataConfig) -> bool:
    return cfg.path in LOCAL_BUILDERS


def stdlib_dir() -> str:
    """The directory of the Python standard library (where the `os` module's file lives)."""
    return os.path.dirname(os.__file__)


def resolve_files(cfg: DataConfig) -> list[str]:
    """Sorted absolute paths of the local files named by cfg.data_files globs, minus cfg.exclude."""
    if not cfg.data_files:
        raise DataError(f"data.path={cfg.path!r} reads local files but data.data_files is empty; set "
                        "data.data_files to a glob such as '/path/**/*.txt'")
    files: set[str] = set()
    for pattern in cfg.data_files:
        expanded = os.path.expanduser(pattern.replace("{stdlib}", stdlib_dir()))
        matched = [p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p)]
        if not matched:
            raise DataError(f"no files match data.data_files pattern {expanded!r} (cwd {os.getcwd()}); "
                            "fix the glob or the path")
        files.update(os.path.abspath(p) for p in matched)
    exclude = [os.path.expanduser(x.replace("{stdlib}", stdlib_dir())) for x in cfg.exclude]
    kept = sorted(f for f in files if not any(fnmatch.fnmatch(f, x) for x in exclude))
    if not kept:
        raise DataError(f"all {len(files)} files matching data.data_files={cfg.data_files} are removed by "
                        f"data.exclude={cfg.exclude}; loosen data.exclude")
    if all(os.path.getsize(f) == 0 for f in kept):
        raise DataError(f"the source is empty: all {len(kept)} files matching data.data_files={cfg.data_files} "
                        f"are 0 bytes (e.g. {kept[0]}); point data.data_files at files with text")
    return kept


def source_fingerprint(cfg: DataConfig, files: list[str] | None) -> str:
    """Identity of the raw source: local files by (path, size, mtime); hub data by name/config/revision."""
    h = hashlib.sha256()
    if files is not None:
        h.update(cfg.path.encode())
        for f in files:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        h.update(json.dumps([cfg.path, cfg.config_name, cfg.revision, sorted(cfg.data_files)]).encode())
    return h.hexdigest()


def load_source(cfg: DataConfig, split: str, files: list[str] | None, cache_dir: str | None = None):
    """`datasets.Dataset` (or `IterableDataset` when cfg.streaming) of one split, with cfg.text_field checked.

    `cache_dir` is the datasets cache when cfg.cache_dir is None.
    """
    import datasets

    kwargs: dict = {"split": split, "streaming": cfg.streaming, "cache_dir": cfg.cache_dir or cache_dir}
    if files is not None:
        name = f"{cfg.path} files {files[0]}" + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")
        kwargs["data_files"] = {split: files}
        if cfg.path == "text":
            kwargs["sample_by"] = cfg.sample_by
            kwargs["keep_linebreaks"] = True
            if cfg.encoding_errors:
                kwargs["encoding_errors"] = cfg.encoding_errors
        args: tuple = (cfg.path,)
    else:
        name = f"hub dataset {cfg.path!r}" + (f" ({cfg.config_name})" if cfg.config_name else "")
        args = (cfg.path, cfg.config_name)
        if cfg.revision:
            kwargs["revision"] = cfg.revision
        if cfg.data_files:
            kwargs["data_files"] = list(cfg.data_files)
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(f"could not load {name} split {split!r}: {type(e).__name__}: {_short(e)}; check "
                        "data.path / data.config_name / data.split and the network (HF_HUB_OFFLINE)") from None
    except Exception as e:  # datasets raises many types (DatasetGenerationError, ValueError, ...)
        raise DataError(f"could not load {name} split {split!r}: {type(e).__name__}: {_short(e)}; check the "
                        "files' format matches data.path") from None
    columns = ds.column_names
    if columns is None:  # streaming json without declared features: look at the first row
        first = next(iter(ds.take(1)), None)
        columns = list(first) if first is not None else [cfg.text_field]
    if cfg.text_field not in columns:
        raise DataError(f"text field {cfg.text_field!r} not found in {name} (columns: {', '.join(columns)}); "
                        "set data.text_field to one of them")
    return ds


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def is_val_doc(doc_index, val_fraction: float):
    """Whether document `doc_index` (int or numpy array) is held out for validation.

    Deterministic and evenly spread: document 0 and then about every (1/val_fraction)-th document, so the
    held-out fraction is exact and any non-empty source has at least one validation document.
    """
    import numpy as np

    ppm = int(round(val_fraction * 1_000_000))
    i = np.asarray(doc_index, dtype=np.int64)
    offset = 1_000_000 - ppm
    return ((i + 1) * ppm + offset) // 1_000_000 > (i * ppm + offset) // 1_000_000
