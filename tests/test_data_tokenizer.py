"""Tokenizer: exact round-trip of any UTF-8 text, EOS handling, hashing, and clear errors."""

import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from data.errors import DataError  # noqa: E402
from data.tokenizer import load_tokenizer, tokenizer_from_spec, train_bpe  # noqa: E402

CORPUS = [
    "def f(x):\n    return x + 1  # add one\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "import os\nimport sys\n\nclass A:\n\tpass\n",
] * 20

TRICKY = [
    "",
    " ",
    "hello world",
    "emoji 😀🙂👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "CJK 中文字符 日本語のテキスト 한국어",
    "whitespace runs:     \t\t\t    \n\n\n   end   ",
    "windows\r\nline\r\nendings\r\n and lone \r cr",
    "tabs\tbetween\twords\t",
    "combining e\u0301 and zero\u200bwidth and nbsp\u00a0and bom\ufeff",
    "nul \x00 and controls \x01\x1f\x7f",
    "a literal <|endoftext|> inside a document",
    "math ∑∫√ and arrows →⇒ and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "    leading spaces",
    "trailing newline\n",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(iter(CORPUS), vocab_size=320, show_progress=False)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_exact(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_batch_encode_matches_single(tok):
    assert tok.encode_batch(TRICKY) == [tok.encode(t) for t in TRICKY]


def test_eos_only_from_the_pipeline(tok):
    assert tok.eos_id == 0 and tok.eos_token == "<|endoftext|>"
    ids = tok.encode("before <|endoftext|> after")
    assert tok.eos_id not in ids  # document text never becomes the separator
    assert tok.decode([tok.eos_id]) == "<|endoftext|>"  # but decoding keeps it visible


def test_learned_merges_compress(tok):
    text = "def f(x):\n    return x + 1"
    assert len(tok.encode(text)) <= len(text.encode()) / 2


def test_save_load_hash(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tok.hash
    again = tokenizer_from_spec(str(path))
    assert again.hash == tok.hash and again.vocab_size == tok.vocab_size
    assert again.encode(TRICKY[3]) == tok.encode(TRICKY[3])
    assert tokenizer_from_spec(str(tmp_path)).hash == tok.hash  # a directory holding tokenizer.json
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file


def test_training_is_deterministic():
    a = train_bpe(iter(CORPUS), vocab_size=300, show_progress=False)
    b = train_bpe(iter(CORPUS), vocab_size=300, show_progress=False)
    assert a.hash == b.hash


def test_bad_tokenizer_inputs(tok, tmp_path):
    with pytest.raises(DataError, match="vocab_size=100"):
        train_bpe(iter(CORPUS), vocab_size=100, show_progress=False)
    with pytest.raises(DataError, match="not found"):
        tokenizer_from_spec(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="could not be read"):
        tokenizer_from_spec(str(bad))
    tok.save(tmp_path / "t.json")
    with pytest.raises(DataError, match="no end-of-text token '<eos>'"):
        tokenizer_from_spec(str(tmp_path / "t.json"), eos_token="<eos>")


def test_load_tokenizer_checks_meta_hash(tok, tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        load_tokenizer(tmp_path)
    tok.save(tmp_path / "tokenizer.json")
    (tmp_path / "meta.json").write_text(json.dumps({"tokenizer_hash": tok.hash, "eos_token": tok.eos_token}))
    assert load_tokenizer(tmp_path).hash == tok.hash
    other = train_bpe(iter(CORPUS), vocab_size=280, show_progress=False)
    other.save(tmp_path / "tokenizer.json")  # replaced behind the shards' back
    with pytest.raises(DataError, match="not the tokenizer the shards were made with"):
        load_tokenizer(tmp_path)
