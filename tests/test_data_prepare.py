"""prepare(): local files through `datasets` -> shards that decode back to the documents; budget, idempotence,
atomicity, and clear errors for bad input. All outputs (and the datasets cache) stay under tmp_path."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import data.pipeline  # noqa: E402
from data import DataConfig, DataError, TokenLoader, dataset_vocab_size, load_tokenizer, prepare  # noqa: E402
from data.shards import open_shard  # noqa: E402
from data.sources import is_val_doc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_docs(n: int = 30) -> list[str]:
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu 中文 😀".split()
    return [f"Document {i}:\n" + " ".join(rng.choice(words, size=int(rng.integers(5, 80)))) + "\n\tend."
            for i in range(n)]


def write_text_files(folder: Path, docs: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (folder / f"doc_{i:03d}.txt").write_text(d, encoding="utf-8")


def cfg_for(tmp_path: Path, **kw) -> DataConfig:
    base = dict(name="tiny", path="text", data_files=[str(tmp_path / "src" / "*.txt")], exclude=[],
                root=str(tmp_path / "out"), cache_dir=str(tmp_path / "hf_cache"), vocab_size=300,
                tokenizer_train_chars=100_000, max_tokens=None, val_fraction=0.2, num_proc=1, batch_docs=8)
    base.update(kw)
    return DataConfig(**base)


def read_split(out: Path, split: str) -> np.ndarray:
    meta = json.loads((out / "meta.json").read_text())
    parts = [np.asarray(open_shard(out / s["file"], meta["tokenizer_hash"])) for s in meta["splits"][split]["shards"]]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def decode_docs(out: Path, split: str) -> list[str]:
    """The documents of a split: the stream is EOS doc EOS doc ..."""
    tok = load_tokenizer(out)
    stream = read_split(out, split).astype(np.int64)
    starts = np.flatnonzero(stream == tok.eos_id)
    assert len(starts) and starts[0] == 0
    bounds = list(starts) + [len(stream)]
    return [tok.decode(stream[a + 1:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def expected_split(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    is_val = is_val_doc(np.arange(len(docs)), val_fraction)
    return [d for d, v in zip(docs, is_val) if not v], [d for d, v in zip(docs, is_val) if v]


def test_text_files_round_trip(tmp_path):
    docs = make_docs()
    write_text_files(tmp_path / "src", docs)
    out = prepare(cfg_for(tmp_path))
    assert out == tmp_path / "out" / "tiny"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train_000000.bin",
                                                      "val_000000.bin"]
    train, val = expected_split(docs, 0.2)
    assert len(val) == 6 and not set(train) & set(val)
    assert decode_docs(out, "train") == train
    assert decode_docs(out, "val") == val
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["docs"] == len(train) and meta["splits"]["val"]["docs"] == len(val)
    assert meta["vocab_size"] == 300 == dataset_vocab_size(out)
    assert meta["eos_id"] == load_tokenizer(out).eos_id and meta["dtype"] == "uint16"
    assert meta["splits"]["train"]["tokens"] == len(read_split(out, "train"))
    assert not list((tmp_path / "out").glob(".*"))  # no temporary directory left behind


def test_jsonl_and_parquet_text_field(tmp_path):
    docs = make_docs(12)
    (tmp_path / "j").mkdir()
    with open(tmp_path / "j" / "part.jsonl", "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "text": d}) + "\n")
    out = prepare(cfg_for(tmp_path, name="j", path="json", data_files=[str(tmp_path / "j" / "*.jsonl")],
                          val_fraction=0.25))
    train, val = expected_split(docs, 0.25)
    assert decode_docs(out, "train") == train and decode_docs(out, "val") == val

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"content": docs[:6], "n": list(range(6))}), tmp_path / "p" / "a.parquet")
    pq.write_table(pa.table({"content": docs[6:], "n": list(range(6, 12))}), tmp_path / "p" / "b.parquet")
    out = prepare(cfg_for(tmp_path, name="p", path="parquet", data_files=[str(tmp_path / "p" / "*.parquet")],
                          text_field="content", val_fraction=0.25))
    assert decode_docs(out, "train") == train and decode_docs(out, "val") == val


def test_streaming_and_num_proc_give_identical_shards(tmp_path):
    write_text_files(tmp_path / "src", make_docs(40))
    ref = prepare(cfg_for(tmp_path, name="ref"))
    for name, kw in [("mp", {"num_proc": 2}), ("stream", {"streaming": True})]:
        out = prepare(cfg_for(tmp_path, name=name, **kw))
        for f in ("tokenizer.json", "train_000000.bin", "val_000000.bin"):
            assert (out / f).read_bytes() == (ref / f).read_bytes(), (name, f)


@pytest.mark.parametrize("streaming", [False, True])
def test_max_tokens_budget_and_multiple_shards(tmp_path, streaming):
    write_text_files(tmp_path / "src", make_docs(40))
    out = prepare(cfg_for(tmp_path, max_tokens=1000, shard_tokens=300, streaming=streaming))
    meta = json.loads((out / "meta.json").read_text())
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    assert tr["tokens"] + va["tokens"] == 1000
    assert [s["tokens"] for s in tr["shards"]][:-1] == [300] * (len(tr["shards"]) - 1)
    assert len(tr["shards"]) == -(-tr["tokens"] // 300) >= 3
    assert sum(s["docs"] for s in tr["shards"]) == tr["docs"]
    assert meta["source"]["stopped_at_max_tokens"] and meta["source"]["documents_read"] < 40
    docs = make_docs(40)
    train, _ = expected_split(docs[:meta["source"]["documents_read"]], 0.2)
    got = decode_docs(out, "train")
    assert got[:-1] == train[:len(got) - 1]  # whole documents, in order
    assert (train[len(got) - 1]).startswith(got[-1]) or got[-1] in train  # only the last one may be cut


def test_idempotent_and_rebuilds_when_stale(tmp_path):
    write_text_files(tmp_path / "src", make_docs(20))
    cfg = cfg_for(tmp_path)
    out = prepare(cfg)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    created = json.loads((out / "meta.json").read_text())["created"]
    assert prepare(cfg) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp  # reused, nothing rewritten
    prepare(cfg_for(tmp_path, num_proc=2, batch_docs=3))  # speed settings do not change the output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp

    prepare(cfg_for(tmp_path, vocab_size=280))  # a setting that changes the output
    assert load_tokenizer(out).vocab_size == 280
    prepare(cfg)
    assert load_tokenizer(out).vocab_size == 300

    src = tmp_path / "src" / "doc_003.txt"  # the source changed
    src.write_text("a brand new third document")
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    prepare(cfg)
    assert "a brand new third document" in decode_docs(out, "train")

    shard = out / "train_000000.bin"  # a damaged shard is rebuilt
    shard.write_bytes(shard.read_bytes()[:-2])
    prepare(cfg)
    assert len(TokenLoader(out, "train", seq_len=8, batch_size=2).next_batch()[0]) == 2
    assert json.loads((out / "meta.json").read_text())["created"] >= created


def test_given_tokenizer_file(tmp_path):
    write_text_files(tmp_path / "src", make_docs(20))
    first = prepare(cfg_for(tmp_path))
    tok_file = tmp_path / "my_tokenizer.json"
    tok_file.write_bytes((first / "tokenizer.json").read_bytes())
    out = prepare(cfg_for(tmp_path, name="given", tokenizer=str(tok_file)))
    assert load_tokenizer(out).hash == load_tokenizer(first).hash
    assert (out / "train_000000.bin").read_bytes() == (first / "train_000000.bin").read_bytes()
    stamp = (out / "meta.json").stat().st_mtime_ns
    prepare(cfg_for(tmp_path, name="given", tokenizer=str(tok_file)))
    assert (out / "meta.json").stat().st_mtime_ns == stamp


def test_interrupted_prepare_keeps_previous_data(tmp_path, monkeypatch):
    write_text_files(tmp_path / "src", make_docs(20))
    out = prepare(cfg_for(tmp_path))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.pipeline.ShardWriter, "flush", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg_for(tmp_path, vocab_size=280, shard_tokens=50))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old dataset untouched
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny"]  # no partial directory
    monkeypatch.undo()

    leftover = tmp_path / "out" / ".tiny.tmp-999999999"  # a killed run (its process is gone)
    leftover.mkdir()
    (leftover / "train_000000.bin").write_bytes(b"partial")
    prepare(cfg_for(tmp_path, vocab_size=280))
    assert not leftover.exists() and load_tokenizer(out).vocab_size == 280


def _one_line_error(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as e:
        prepare(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_input_errors(tmp_path):
    msg = _one_line_error(cfg_for(tmp_path, data_files=[str(tmp_path / "nowhere" / "*.txt")]))
    assert "no files match" in msg and "nowhere" in msg

    write_text_files(tmp_path / "src", make_docs(5))
    msg = _one_line_error(cfg_for(tmp_path, exclude=["*.txt"]))
    assert "data.exclude" in msg

    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "empty.jsonl").write_text("")
    msg = _one_line_error(cfg_for(tmp_path, path="json", data_files=[str(tmp_path / "e" / "*.jsonl")]))
    assert "the source is empty" in msg and "empty.jsonl" in msg
    (tmp_path / "e" / "empty.jsonl").write_text("\n")  # not 0 bytes, but still no rows
    msg = _one_line_error(cfg_for(tmp_path, path="json", data_files=[str(tmp_path / "e" / "*.jsonl")]))
    assert "empty.jsonl" in msg

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.jsonl").write_text(json.dumps({"body": "hello there"}) + "\n")
    msg = _one_line_error(cfg_for(tmp_path, path="json", data_files=[str(tmp_path / "f" / "*.jsonl")]))
    assert "text field 'text' not found" in msg and "body" in msg and "data.text_field" in msg
    msg = _one_line_error(cfg_for(tmp_path, path="json", data_files=[str(tmp_path / "f" / "*.jsonl")],
                                  streaming=True))
    assert "text field 'text' not found" in msg

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "blank.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", None, ""] * 3))
    msg = _one_line_error(cfg_for(tmp_path, path="json", data_files=[str(tmp_path / "g" / "*.jsonl")]))
    assert "only empty documents" in msg

    msg = _one_line_error(cfg_for(tmp_path, tokenizer=str(tmp_path / "missing" / "tokenizer.json")))
    assert "not found" in msg and "data.tokenizer" in msg
    msg = _one_line_error(cfg_for(tmp_path, val_split="validation"))
    assert "val_split" in msg
    msg = _one_line_error(cfg_for(tmp_path, val_fraction=1.5))
    assert "val_fraction" in msg


def test_hub_dataset_offline_is_a_clear_error(tmp_path):
    cfg = DataConfig(name="hub", path="someone/does-not-exist", data_files=[], exclude=[], root=str(tmp_path),
                     cache_dir=str(tmp_path / "hf_cache"))
    msg = _one_line_error(cfg)
    assert "someone/does-not-exist" in msg and "could not load" in msg


def test_cli(tmp_path):
    """python -m data.prepare through Hydra, on the default (offline) dataset with a small budget."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    args = [sys.executable, "-m", "data.prepare", f"data.root={tmp_path}", "data.max_tokens=20000",
            "data.vocab_size=300", "data.tokenizer_train_chars=50000", "data.num_proc=1"]
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = Path(r.stdout.strip().splitlines()[-1])
    assert out == tmp_path / "pystdlib"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == 20000
    assert meta["source"]["files"] > 50  # the standard library's modules

    r = subprocess.run(args + ["data.data_files=[/nonexistent/*.py]"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: no files match")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs" / "data").glob("*.yaml")))
def test_data_group_configs_compose(name):
    """Every configs/data/*.yaml composes under the root config into a valid DataConfig (hub ones not run)."""
    from data import as_data_config
    from data.sources import is_local, resolve_files
    from tests.conftest import compose_config

    cfg = as_data_config(compose_config([f"data={name}", "run_dir=unused"]).data)
    assert cfg.name == name
    if is_local(cfg):
        assert len(resolve_files(cfg)) > 50
    else:
        assert "/" in cfg.path and not cfg.data_files and not cfg.exclude and cfg.tokenizer == "gpt2"
        assert cfg.val_split is not None or 0 < cfg.val_fraction < 0.01
