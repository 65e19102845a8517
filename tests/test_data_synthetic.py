"""Synthetic long-context documents do what they claim (exact length, needle present, answer recoverable and
consistent with the needle), and the loader mixes them in deterministically, independent of world size."""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from data import DataConfig, DataError, MixConfig, TokenLoader, load_tokenizer, prepare  # noqa: E402
from data.synthetic import copying, generate, mqar, multikey, needle, passkey  # noqa: E402
from data.tokenizer import train_bpe  # noqa: E402

REAL_TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
             "foolishness, it was the epoch of belief, it was the epoch of incredulity. 中文 😀 ")


@pytest.fixture(scope="module")
def tok():
    corpus = [REAL_TEXT, "The special magic number for apple is 1234567.", "The pass key is 12345.",
              " abcd=123 efgh=456"] * 20
    return train_bpe(iter(corpus), vocab_size=400, show_progress=False)


def check_spans(doc, tok, n):
    assert len(doc.tokens) == n
    assert doc.answers[-1].end == n  # the final answer ends the document
    for m in doc.answers + doc.needles:
        assert tok.decode(doc.tokens[m.start:m.end]) == m.text
        assert m.text in doc.text
    assert tok.decode(doc.prompt_tokens) + doc.answer == doc.text


@pytest.mark.parametrize("n", [160, 400, 1000])
def test_passkey(tok, n):
    doc = passkey(tok, n, seed=7)
    check_spans(doc, tok, n)
    key = re.search(r"The pass key is (\d{5})\.", doc.text).group(1)
    assert doc.answer == f" {key}" and doc.needles[0].text.count(key) == 2
    assert doc.text.rstrip().endswith(f"What is the pass key? The pass key is {key}")
    assert passkey(tok, n, seed=7).tokens == doc.tokens  # seeded
    assert passkey(tok, n, seed=8).answer != doc.answer or passkey(tok, n, seed=8).tokens != doc.tokens


def test_passkey_depth(tok):
    early, late = passkey(tok, 1000, seed=1, depth=0.0), passkey(tok, 1000, seed=1, depth=1.0)
    assert early.needles[0].start < 50 and late.needles[0].start > 900


@pytest.mark.parametrize("haystack_kind", ["filler", "text", "ids"])
def test_multikey(tok, haystack_kind):
    haystack = {"filler": None, "text": REAL_TEXT, "ids": tok.encode(REAL_TEXT)}[haystack_kind]
    doc = multikey(tok, 600, seed=3, haystack=haystack, n_keys=5)
    check_spans(doc, tok, 600)
    facts = dict(re.findall(r"The special magic number for (\w+) is (\d+)\.", doc.text))
    assert len(facts) == 5 and len(doc.needles) == 5
    asked = re.search(r"What is the special magic number for (\w+)\?", doc.text).group(1)
    assert doc.answer == f" {facts[asked]}"
    starts = [m.start for m in doc.needles]
    assert starts == sorted(starts) and all(a.end <= b.start for a, b in zip(doc.needles, doc.needles[1:]))
    if haystack_kind == "text":
        assert "it was the age of wisdom" in doc.text  # needles sit in the real text


def test_needle_is_one_magic_number_in_the_given_text(tok):
    doc = needle(tok, 400, seed=4, haystack=REAL_TEXT)
    check_spans(doc, tok, 400)
    facts = dict(re.findall(r"The special magic number for (\w+) is (\d+)\.", doc.text))
    assert len(facts) == 1 and len(doc.needles) == 1 and doc.answer == f" {next(iter(facts.values()))}"
    assert "it was the age of wisdom" in doc.text
    assert generate("needle", tok, 400, seed=4, haystack=REAL_TEXT).tokens == doc.tokens  # the loader's route


def test_mqar(tok):
    doc = mqar(tok, 800, seed=5, n_pairs=12, n_queries=4)
    check_spans(doc, tok, 800)
    block, queries = doc.text.split("Recall the values:")
    pairs = dict(re.findall(r" (\w{4})=(\d{3})", block))
    assert len(pairs) == 12 == len(doc.needles)
    assert len(doc.answers) == 4
    for a in doc.answers:
        key = re.search(r" (\w{4})=$", tok.decode(doc.tokens[:a.start])).group(1)  # the query before it
        assert pairs[key] == a.text
    assert len(re.findall(r" \w{4}=\d{3}", queries)) == 4


@pytest.mark.parametrize("n", [200, 400, 1000])
def test_copy(tok, n):
    doc = copying(tok, n, seed=2)
    check_spans(doc, tok, n)
    assert doc.answer == doc.needles[0].text and len(doc.answer.split()) == max(4, min(32, n // 16))
    assert doc.text.startswith("Memorise this sequence:" + doc.answer)
    assert doc.text.endswith("Repeat the sequence:" + doc.answer)
    assert copying(tok, n, seed=2).tokens == doc.tokens and copying(tok, n, seed=3).answer != doc.answer


def test_generator_errors(tok):
    with pytest.raises(ValueError, match="too short"):
        passkey(tok, 10, seed=0)
    with pytest.raises(ValueError, match="too short"):
        mqar(tok, 40, seed=0, n_pairs=30)
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        generate("sudoku", tok, 100, seed=0)


# --- the mix in the loader ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    (root / "src").mkdir()
    for i in range(12):
        (root / "src" / f"{i}.txt").write_text(f"Document {i}. " + REAL_TEXT * 30)
    cfg = DataConfig(name="mix", path="text", data_files=[str(root / "src" / "*.txt")], exclude=[],
                     root=str(root / "out"), cache_dir=str(root / "hf"), vocab_size=400, max_tokens=None,
                     val_fraction=0.1, num_proc=1)
    return prepare(cfg)


def rows(ld, steps):
    return torch.cat([ld.next_batch()[1] for _ in range(steps)])  # targets: answers are in y


def test_mix_rate_and_answers(real_ds):
    tok = load_tokenizer(real_ds)
    seq = 256
    plain = TokenLoader(real_ds, "train", seq_len=seq, batch_size=8, seed=1)
    mixed = TokenLoader(real_ds, "train", seq_len=seq, batch_size=8, seed=1, mix=MixConfig(rate=0.5))
    y0, y1 = rows(plain, 10), rows(mixed, 10)
    changed = [i for i in range(len(y0)) if not torch.equal(y0[i], y1[i])]
    assert 0.3 < len(changed) / len(y0) < 0.7
    kinds = set()
    for i in changed:
        text = tok.decode(y1[i].tolist())
        if "The pass key is" in text:
            key = re.search(r"The pass key is (\d{5})\.", text).group(1)
            assert text.endswith(f"What is the pass key? The pass key is {key}")
            kinds.add("passkey")
        elif "special magic number" in text:
            facts = dict(re.findall(r"The special magic number for (\w+) is (\d+)\.", text))
            asked, value = re.search(r"special magic number for (\w+)\? The special magic number for \w+ is (\d+)$",
                                     text).groups()
            assert facts[asked] == value
            kinds.add("multikey")
        else:
            block, queries = text.split("Recall the values:")
            pairs = dict(re.findall(r" (\w{4})=(\d{3})", block))
            assert all(pairs[k] == v for k, v in re.findall(r" (\w{4})=(\d{3})", queries))
            kinds.add("mqar")
    assert kinds == {"passkey", "multikey", "mqar"}
    again = TokenLoader(real_ds, "train", seq_len=seq, batch_size=8, seed=1, mix=MixConfig(rate=0.5))
    assert torch.equal(rows(again, 10), y1)  # deterministic


def test_mix_is_world_size_invariant_and_resumable(real_ds):
    mix = MixConfig(rate=0.3, kinds=["passkey", "mqar"])
    one = TokenLoader(real_ds, "train", seq_len=256, batch_size=4, seed=5, mix=mix)
    two = [TokenLoader(real_ds, "train", seq_len=256, batch_size=2, seed=5, mix=mix, rank=r, world_size=2)
           for r in range(2)]
    for _ in range(6):
        x1 = one.next_batch()[0]
        xr = [t.next_batch()[0] for t in two]
        assert torch.equal(x1[0::2], xr[0]) and torch.equal(x1[1::2], xr[1])
    state = one.state_dict()
    nxt = one.next_batch()[0]
    fresh = TokenLoader(real_ds, "train", seq_len=256, batch_size=4, seed=5, mix=mix)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.next_batch()[0], nxt)


def test_mix_length_keeps_real_prefix(real_ds):
    tok = load_tokenizer(real_ds)
    seq, length = 400, 200
    plain = TokenLoader(real_ds, "train", seq_len=seq, batch_size=8, seed=2)
    mixed = TokenLoader(real_ds, "train", seq_len=seq, batch_size=8, seed=2,
                        mix=MixConfig(rate=1.0, length=length, kinds=["passkey"]))
    (x0, y0), (x1, y1) = plain.next_batch(), mixed.next_batch()
    full0, full1 = torch.cat([x0, y0[:, -1:]], 1), torch.cat([x1, y1[:, -1:]], 1)  # the seq+1 windows
    cut = seq + 1 - length
    assert torch.equal(full1[:, :cut], full0[:, :cut])  # real tokens before the synthetic document
    assert torch.all(full1[:, cut] == tok.eos_id)  # a document boundary
    for row in full1:
        assert "The pass key is" in tok.decode(row[cut:].tolist())


def test_mix_config_errors(real_ds):
    with pytest.raises(DataError, match="unknown kinds"):
        TokenLoader(real_ds, "train", seq_len=64, batch_size=1, mix=MixConfig(rate=0.1, kinds=["nope"]))
    with pytest.raises(DataError, match="mix.length"):
        TokenLoader(real_ds, "train", seq_len=64, batch_size=1, mix=MixConfig(rate=0.1, length=500))
    with pytest.raises(DataError, match="synthetic 'passkey' does not fit in 65 tokens"):
        TokenLoader(real_ds, "train", seq_len=64, batch_size=1, mix=MixConfig(rate=0.1))
    with pytest.raises(DataError, match="synthetic 'passkey' does not fit in 40 tokens"):
        TokenLoader(real_ds, "train", seq_len=256, batch_size=1, mix=MixConfig(rate=0.1, min_length=40))
    with pytest.raises(DataError, match="mix.min_length=300 must be in"):
        TokenLoader(real_ds, "train", seq_len=256, batch_size=1, mix=MixConfig(rate=0.1, min_length=300))
    with pytest.raises(DataError, match=r"data.mix.filler=1.5 must be a fraction in \[0, 1\]"):
        TokenLoader(real_ds, "train", seq_len=256, batch_size=1, mix=MixConfig(rate=0.1, filler=1.5))
    assert TokenLoader(real_ds, "train", seq_len=64, batch_size=1, mix=MixConfig(rate=0.0)).mix is None


def test_mix_filler_hides_that_fraction_of_needles_in_filler(real_ds):
    """data.mix.filler: that fraction of the needle documents hide their magic number in repeated filler, the
    others in the text of the sample they replace; the choice is deterministic."""
    from data.synthetic import FILLER

    tok = load_tokenizer(real_ds)

    def in_filler(filler: float) -> list[bool]:
        mix = MixConfig(rate=1.0, kinds=["needle"], min_length=128, filler=filler)
        ld = TokenLoader(real_ds, "train", seq_len=511, batch_size=8, seed=5, mix=mix)
        x, y = ld.next_batch()
        found = []
        for row in torch.cat([x, y[:, -1:]], 1).tolist():
            cuts = [i for i, t in enumerate(row) if t == tok.eos_id] + [len(row)]
            for a, b in zip(cuts, cuts[1:]):
                text = tok.decode(row[a + 1:b])
                needle = re.search(r" The special magic number for \w+ is \d+\.", text)  # a needle document
                rest = text[:needle.start()] + text[needle.end():]  # the haystack (the needle may split a word)
                found.append(FILLER[:10] in rest)  # " The grass": short documents hold a few filler words
        return found

    assert not any(in_filler(0.0)) and all(in_filler(1.0))
    half = in_filler(0.5)
    assert 0.2 < sum(half) / len(half) < 0.8 and in_filler(0.5) == half


def test_mix_draw_that_does_not_fit_keeps_the_real_sample(real_ds, monkeypatch):
    import data.loader

    plain = TokenLoader(real_ds, "train", seq_len=256, batch_size=4, seed=3)
    mixed = TokenLoader(real_ds, "train", seq_len=256, batch_size=4, seed=3, mix=MixConfig(rate=1.0))

    def too_long(*args, **kwargs):
        raise ValueError("passkey: n_tokens=256 is too short")

    monkeypatch.setattr(data.loader, "generate", too_long)
    assert torch.equal(plain.next_batch()[0], mixed.next_batch()[0])


def test_mix_min_length_packs_several_answered_documents(real_ds):
    tok = load_tokenizer(real_ds)
    seq, lo = 1023, 192
    mix = MixConfig(rate=1.0, min_length=lo, kinds=["passkey", "mqar"])
    ld = TokenLoader(real_ds, "train", seq_len=seq, batch_size=8, seed=4, mix=mix)
    x, y = ld.next_batch()
    windows = torch.cat([x, y[:, -1:]], 1)  # the seq+1 tokens of each sample
    n_docs = []
    for row in windows.tolist():
        assert row[0] == tok.eos_id  # the first document starts the sample
        cuts = [i for i, t in enumerate(row) if t == tok.eos_id] + [len(row)]
        lengths = [b - a for a, b in zip(cuts, cuts[1:])]
        assert all(n >= lo for n in lengths) and sum(lengths) == seq + 1
        for a, b in zip(cuts, cuts[1:]):
            text = tok.decode(row[a + 1:b])
            if "The pass key is" in text:  # every document ends with its own correct answer
                key = re.search(r"The pass key is (\d{5})\.", text).group(1)
                assert text.endswith(f"What is the pass key? The pass key is {key}")
            else:
                block, queries = text.split("Recall the values:")
                pairs = dict(re.findall(r" (\w{4})=(\d{3})", block))
                assert queries and all(pairs[k] == v for k, v in re.findall(r" (\w{4})=(\d{3})", queries))
        n_docs.append(len(lengths))
    assert max(n_docs) > 1 and sum(n_docs) / len(n_docs) > 1.5  # log-uniform in [192, 1024]: ~2 on average
    again = TokenLoader(real_ds, "train", seq_len=seq, batch_size=8, seed=4, mix=mix)
    assert torch.equal(again.next_batch()[0], x)  # a pure function of (seed, sample)
