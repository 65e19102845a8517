"""Typed configs of the `data` Hydra group (configs/data/*.yaml fill these fields).

The defaults are the offline default dataset, `pystdlib`: the Python standard library's own source files,
which exist on every machine, so a fresh checkout can prepare data and train without any network.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MixConfig:
    """Long-context synthetic documents mixed into training by the loader (see data/synthetic.py).

    A fraction `rate` of the global samples, chosen from (seed, global sample index), is replaced by a freshly
    generated synthetic document (or, with `min_length`, several). `length` is how many tokens are replaced
    (None: the whole sample, seq_len + 1 tokens); a shorter region is placed at the end of the sample, after the
    real tokens, so an answer is always the last thing in the sample.
    """

    rate: float = 0.0  # fraction of samples replaced; 0 disables the mix
    length: int | None = None  # tokens replaced at the end of a chosen sample; None = the whole seq_len + 1
    # None: one document fills those tokens. An int: several documents, back to back, whose lengths are drawn
    # log-uniformly in [min_length, what is left] (so ~log2(length / min_length) / 2 documents per sample, short
    # and long alike): many more retrieval answers per sample than one document asking once at the end.
    min_length: int | None = None
    kinds: list[str] = field(default_factory=lambda: ["passkey", "multikey", "mqar"])  # drawn uniformly
    # Fraction of the documents of the kinds that hide needles in the sample's own text (multikey, needle) that
    # hide them in repeated filler instead. A tiny model learns a needle in filler long before one in real text;
    # a 50/50 mix taught it neither, but 1.0 first and then 0 (resuming the checkpoint) taught it needles in text
    # (docs/results/gpu-small/NOTES.md).
    filler: float = 0.0


@dataclass
class DataConfig:
    name: str = "pystdlib"  # names the prepared dataset: <root>/<name>/
    # --- source: the first argument of datasets.load_dataset --------------------------------------------
    # A packaged local builder ("text", "json", "parquet", "csv": files from `data_files`) or a hub dataset
    # name such as "HuggingFaceFW/fineweb-edu".
    path: str = "text"
    config_name: str | None = None  # hub subset, e.g. "sample-10BT"
    revision: str | None = None  # hub revision (branch, tag or commit)
    split: str = "train"
    # Globs. For local builders they are resolved here ("{stdlib}" = the directory of the `os` module's
    # file); for a hub dataset they are passed to load_dataset as patterns inside the repository.
    data_files: list[str] = field(default_factory=lambda: ["{stdlib}/**/*.py"])
    exclude: list[str] = field(default_factory=lambda: [
        "{stdlib}/site-packages/*", "{stdlib}/dist-packages/*", "{stdlib}/test/*", "{stdlib}/*/tests/*",
        "{stdlib}/*/test/*", "{stdlib}/idlelib/idle_test/*",
    ])  # fnmatch patterns ("*" spans folders) on the resolved local paths; "{stdlib}" as above
    text_field: str = "text"
    streaming: bool = False  # iterate the source instead of downloading/caching it whole (large hub datasets)
    sample_by: str = "document"  # "text" builder only: one document per "document" | "paragraph" | "line"
    encoding_errors: str | None = "replace"  # "text" builder only: how to decode invalid UTF-8
    # datasets cache. None: hub data uses HF_DATASETS_CACHE (~/.cache/huggingface/datasets); local files use a
    # scratch cache inside the build directory, deleted afterwards (nothing is written outside <root>).
    cache_dir: str | None = None
    # --- split and budget --------------------------------------------------------------------------------
    val_split: str | None = None  # a source split to use as validation; None = carve val_fraction out
    val_fraction: float = 0.02  # fraction of documents (every 1/f-th, deterministic) held out for val
    max_tokens: int | None = 2_000_000  # token budget over train + val (EOS included); None = everything
    val_max_tokens: int | None = None  # budget of a separate val_split; None = everything
    # --- tokenizer ---------------------------------------------------------------------------------------
    # "bpe": train a byte-level BPE on the train documents; a path to a tokenizer.json; or a hub name.
    tokenizer: str = "bpe"
    vocab_size: int = 2048  # "bpe" only, special tokens included
    tokenizer_train_chars: int = 2_000_000  # "bpe" only: characters of train text the BPE learns from
    eos_token: str = "<|endoftext|>"  # separates documents; must exist in a loaded tokenizer
    # --- output ------------------------------------------------------------------------------------------
    root: str = "data_cache"  # prepared datasets live in <root>/<name>/ (relative to the working directory)
    shard_tokens: int = 100_000_000  # tokens per shard file
    num_proc: int | None = None  # tokenization processes; None = all CPU cores
    batch_docs: int = 256  # documents per tokenization batch
    # --- long-context mix (used by the loader, not by prepare) ---------------------------------------------
    mix: MixConfig = field(default_factory=MixConfig)


def as_data_config(cfg) -> DataConfig:
    """DataConfig from a DataConfig, a dict or an OmegaConf node (e.g. Hydra's `cfg.data`), type-checked."""
    if isinstance(cfg, DataConfig):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg))


def as_mix_config(mix) -> MixConfig | None:
    """MixConfig (or None when absent or rate == 0) from a MixConfig, a dict or an OmegaConf node."""
    if mix is None:
        return None
    if not isinstance(mix, MixConfig):
        from omegaconf import OmegaConf

        mix = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MixConfig), mix))
    return mix if mix.rate > 0 else None
