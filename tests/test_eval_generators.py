"""The eval's document generators put needles where they say, at exact lengths, with answers that are right."""

import re
from collections import Counter
from pathlib import Path

import pytest

from data.tokenizer import train_bpe
from evaluation import longbench as lb
from evaluation.ruler import RULER_KINDS, niah_doc, ruler_sample, snap_to_sentence

PROSE = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
         "foolishness. It was the epoch of belief, it was the epoch of incredulity! Was it the season of Light? ")


@pytest.fixture(scope="module")
def tok():
    corpus = [PROSE, "The special magic number for apple is 1234567.", "VAR ABCDE = VAR FGHIJ.",
              "1. apple-river 2. lemon-stone", "def f(x):\n    return x + 1\n"] * 20
    return train_bpe(iter(corpus), vocab_size=500, show_progress=False)


@pytest.fixture(scope="module")
def hay(tok):
    return tok.encode(PROSE * 40)


def check_spans(tok, tokens, spans):
    for m in spans:
        assert tok.decode(tokens[m.start:m.end]) == m.text


@pytest.mark.parametrize("depth", [0.0, 30.0, 50.0, 100.0])
def test_niah_needle_at_its_depth(tok, hay, depth):
    n = 600
    doc = niah_doc(tok, n, seed=4, depth=depth, haystack=hay)
    assert len(doc.tokens) == n and doc.answers[-1].end == n
    check_spans(tok, doc.tokens, doc.needles + doc.answers)
    key, value = re.search(r"The special magic number for (\w+) is (\d+)\.", doc.needles[0].text).groups()
    assert doc.answer == f" {value}"
    assert tok.decode(doc.prompt_tokens).endswith(f"The special magic number for {key} is")
    # the needle starts within the snapping window (48 tokens) before depth % of the haystack
    intro = len(tok.encode("Read the text below carefully: a special magic number is hidden in it.\n\n"))
    n_hay = n - sum(len(tok.encode(t)) for t in (doc.needles[0].text, doc.answers[0].text)) - intro - len(
        tok.encode(f"\n\nQuestion: What is the special magic number for {key} mentioned in the text above? "
                   f"Answer: The special magic number for {key} is"))
    target = intro + round(depth / 100 * n_hay)
    assert target - 48 <= doc.needles[0].start <= target
    prev = tok.decode(doc.tokens[doc.needles[0].start - 1:doc.needles[0].start])
    assert depth == 0 or prev.rstrip(" ").endswith((".", "!", "?", "\n")) or doc.needles[0].start == target


def test_snap_to_sentence(tok):
    ids = tok.encode("One two. Three four five")
    cut = len(ids) - 1
    snapped = snap_to_sentence(tok, ids, cut)
    assert tok.decode(ids[:snapped]).endswith(".")
    assert snap_to_sentence(tok, ids, cut, window=0) == cut


@pytest.mark.parametrize("kind", RULER_KINDS)
def test_ruler_samples(tok, hay, kind):
    n = 900 if kind != "cwe" else 1400
    s = ruler_sample(kind, tok, n, seed=2, haystack=hay)
    assert len(s.prompt) == n
    check_spans(tok, s.prompt, s.needles)
    text = tok.decode(s.prompt)
    assert s.outputs and all(o in text for o in s.outputs)
    assert ruler_sample(kind, tok, n, seed=2, haystack=hay).prompt == s.prompt  # seeded
    if kind.startswith("niah"):
        facts = re.findall(r"special magic numbers for ([\w-]+) is: (\d+)\.", " ".join(m.text for m in s.needles))
        n_keys, n_values, n_asked = {"niah_single": (1, 1, 1), "niah_multikey": (4, 1, 1),
                                     "niah_multivalue": (1, 4, 1), "niah_multiquery": (4, 1, 4)}[kind]
        assert len({k for k, _ in facts}) == n_keys and len(facts) == n_keys * n_values
        asked = re.search(r"What are all the special magic numbers for (.+?) mentioned", text).group(1)
        expected = [v for k, v in facts if k in re.split(r", and |, ", asked)]
        assert sorted(expected) == sorted(s.outputs) and len(s.outputs) == n_asked * n_values
        if kind != "niah_single":
            assert "age of wisdom" in text  # needles sit in the prose haystack
    if kind == "vt":
        assert len(s.outputs) == 5 and [m.start for m in s.needles] == sorted(m.start for m in s.needles)
        value = re.search(rf"VAR {s.outputs[0]} = (\d+)\.", text).group(1)
        for a, b in zip(s.outputs, s.outputs[1:]):
            assert f"VAR {b} = VAR {a}." in text  # a chain, in order
        assert f"assigned the value {value}" in text
    if kind == "cwe":
        words = Counter(re.findall(r"\d+\. ([\w-]+)", s.needles[0].text))
        top = {w for w, _ in words.most_common(10)}
        assert top == set(s.outputs) and min(words[w] for w in top) > max(
            (c for w, c in words.items() if w not in top), default=0)


def test_ruler_too_short_and_unknown(tok):
    with pytest.raises(ValueError, match="too short"):
        ruler_sample("vt", tok, 20, seed=0)
    with pytest.raises(ValueError, match="unknown RULER task"):
        ruler_sample("qa", tok, 500, seed=0)


def test_local_longbench_tasks(tok, tmp_path):
    budget = 1500
    lb.write_local_tasks(tmp_path, tok, 3, dict.fromkeys(lb.LOCAL_TASKS, budget), seed=5)
    for task in lb.LOCAL_TASKS:
        rows = lb.read_jsonl(tmp_path / f"{task}.jsonl", lb.SAMPLE_FIELDS)
        assert len(rows) == 3
        for r in rows:
            assert set(r) >= {"input", "context", "answers", "length", "all_classes", "_id"}
            assert r["length"] == len(r["context"].split())
            prompt = lb.build_prompt(task, r)
            # sized to the budget (passage tasks keep at least 2 paragraphs)
            assert len(tok.encode(prompt)) <= budget or r["context"].count("Paragraph ") == 2
            if task == "local_passage_retrieval":
                i = int(re.fullmatch(r"Paragraph (\d+)", r["answers"][0]).group(1))
                paras = re.split(r"\n\nParagraph \d+: ", "\n\n" + r["context"])[1:]
                assert paras[i - 1].startswith(r["input"])  # the abstract is that paragraph's first sentence
            elif task == "local_passage_count":
                paras = re.split(r"\n\nParagraph \d+: ", "\n\n" + r["context"])[1:]
                assert int(r["answers"][0]) == len(set(paras)) and len(paras) >= 2
            else:
                src = next(p for p in lb.stdlib_python_files() if r["context"] + r["answers"][0] + "\n"
                           in p.read_text(encoding="utf-8", errors="replace"))
                assert isinstance(src, Path) and r["context"].endswith("\n") and "#" not in r["answers"][0]
    assert lb.read_jsonl(tmp_path / "local_lcc.jsonl", lb.SAMPLE_FIELDS) == lb.read_jsonl(
        tmp_path / "local_lcc.jsonl", lb.SAMPLE_FIELDS)
