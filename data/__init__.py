"""Data pipeline: HF datasets -> tokenizer -> token shards -> resumable loader (+ synthetic long-context docs).

    from data import DataConfig, prepare, load_tokenizer, TokenLoader
    ds_dir = prepare(DataConfig())                      # <root>/<name>/: tokenizer.json, meta.json, shards
    loader = TokenLoader(ds_dir, "train", seq_len=256, batch_size=8)
    x, y = loader.next_batch()                          # int64 [8, 256] each, y = x shifted by one
"""

from data.config import DataConfig, MixConfig, as_data_config, as_mix_config
from data.errors import DataError
from data.loader import TokenLoader
from data.pipeline import dataset_dir, prepare
from data.tokenizer import Tokenizer, dataset_vocab_size, load_tokenizer

__all__ = [
    "DataConfig",
    "DataError",
    "MixConfig",
    "TokenLoader",
    "Tokenizer",
    "as_data_config",
    "as_mix_config",
    "dataset_dir",
    "dataset_vocab_size",
    "load_tokenizer",
    "prepare",
]
