"""Synthetic long-context retrieval documents, of an exact length in tokens, with their answers marked.

The kinds, each a pure function of (tokenizer, n_tokens, seed[, haystack]):
- passkey:  a 5-digit pass key hidden at a random depth in repeated filler; the document ends by asking for it.
- multikey: several "special magic number for <word>" needles inserted at random places in real text (a
            haystack you pass, as text or token ids); one of them is asked for at the end (the others distract).
- needle:   multikey with a single needle: needle in a haystack without distractors.
- mqar:     multi-query associative recall: a block of key=value pairs, filler, then queries "key=" whose
            values must be recalled (several answers per document).
- copy:     a random word sequence, filler, the same sequence again: dense copying practice for training only.

Each returns a SyntheticDoc whose `tokens` are exactly n_tokens long, whose `answers` and `needles` are token
spans into them, and whose last answer ends the document, so `tokens[:answers[-1].start]` is the prompt an
evaluation feeds and `answers[-1].text` the expected continuation. The document is built by concatenating
separately encoded pieces, so the spans are exact token positions and decode(tokens[span]) == span text.
The training loader (data/loader.py) mixes these in; eval.py reuses the same functions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from data.tokenizer import Tokenizer

FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
WORDS = (
    "apple river stone cloud tiger maple piano rocket violet harbor lemon falcon cactus silver meadow "
    "copper lantern orbit pepper glacier walnut comet saddle thunder velvet canyon mango quartz willow "
    "beacon cobalt dolphin ember fossil garnet hazel island jasmine kettle lotus marble nectar olive "
    "parrot quill raven saffron tundra umber vortex wander yarrow zephyr anchor basalt cedar"
).split()


class Marked(NamedTuple):
    """A piece of the document: its text and its token span [start, end)."""

    text: str
    start: int
    end: int


@dataclass
class SyntheticDoc:
    kind: str
    tokens: list[int]  # exactly the requested length
    answers: list[Marked]  # expected continuations, in order; the last one ends the document
    needles: list[Marked] = field(default_factory=list)  # where the facts to retrieve were put
    seed: int = 0
    tokenizer: Tokenizer | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.tokens)

    @property
    def answer(self) -> str:
        """The final answer (what follows the prompt)."""
        return self.answers[-1].text

    @property
    def prompt_tokens(self) -> list[int]:
        """Tokens before the final answer: what an evaluation feeds the model."""
        return self.tokens[: self.answers[-1].start]


class _Builder:
    """Appends separately encoded pieces and records their token spans."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.tokens: list[int] = []

    def add(self, piece: str | Sequence[int]) -> Marked:
        ids = _encode(self.tok, piece) if isinstance(piece, str) else list(piece)
        start = len(self.tokens)
        self.tokens.extend(ids)
        return Marked(piece if isinstance(piece, str) else "", start, len(self.tokens))


_CACHE: dict[tuple[str, str], list[int]] = {}


def _encode(tok: Tokenizer, text: str) -> list[int]:
    """encode with a small cache (the same short pieces recur in every document)."""
    key = (tok.hash, text)
    ids = _CACHE.get(key)
    if ids is None:
        ids = tok.encode(text)
        if len(_CACHE) > 50_000:
            _CACHE.clear()
        _CACHE[key] = ids
    return list(ids)


def _tile(ids: Sequence[int], n: int) -> list[int]:
    """`ids` repeated and cut to exactly n tokens."""
    if n <= 0:
        return []
    if not ids:
        raise ValueError("cannot fill with an empty haystack")
    reps = -(-n // len(ids))
    return (list(ids) * reps)[:n]


def _too_short(kind: str, n_tokens: int, fixed: int) -> ValueError:
    return ValueError(f"{kind}: n_tokens={n_tokens} is too short for its {fixed} fixed tokens; ask for more")


def passkey(tok: Tokenizer, n_tokens: int, seed: int, depth: float | None = None) -> SyntheticDoc:
    """A pass key hidden at `depth` (0 = start, 1 = end of the filler; random when None)."""
    rng = random.Random(seed)
    key = str(rng.randint(10000, 99999))
    depth = rng.random() if depth is None else depth
    intro = _encode(tok, "There is a pass key hidden in the text below. Find it and remember it.\n")
    needle = _encode(tok, f" The pass key is {key}. Remember it. {key} is the pass key.")
    question = _encode(tok, "\nWhat is the pass key? The pass key is")
    answer = _encode(tok, f" {key}")
    n_fill = n_tokens - len(intro) - len(needle) - len(question) - len(answer)
    if n_fill < 0:
        raise _too_short("passkey", n_tokens, n_tokens - n_fill)
    fill = _tile(_encode(tok, FILLER), n_fill)
    cut = round(depth * n_fill)
    b = _Builder(tok)
    b.add(intro)
    b.add(fill[:cut])
    needle_span = b.add(needle)._replace(text=f" The pass key is {key}. Remember it. {key} is the pass key.")
    b.add(fill[cut:])
    b.add(question)
    answer_span = b.add(answer)._replace(text=f" {key}")
    return SyntheticDoc("passkey", b.tokens, [answer_span], [needle_span], seed, tok)


def multikey(tok: Tokenizer, n_tokens: int, seed: int, haystack: str | Sequence[int] | None = None,
             n_keys: int = 4) -> SyntheticDoc:
    """`n_keys` magic-number needles at random places in `haystack` (repeated filler when None)."""
    rng = random.Random(seed)
    words = rng.sample(WORDS, n_keys)
    numbers = [str(rng.randint(1_000_000, 9_999_999)) for _ in words]
    needle_texts = [f" The special magic number for {w} is {n}." for w, n in zip(words, numbers)]
    q = rng.randrange(n_keys)
    question = f"\nWhat is the special magic number for {words[q]}? The special magic number for {words[q]} is"
    answer = f" {numbers[q]}"
    needles = [_encode(tok, t) for t in needle_texts]
    fixed = sum(map(len, needles)) + len(_encode(tok, question)) + len(_encode(tok, answer))
    n_hay = n_tokens - fixed
    if n_hay < 0:
        raise _too_short("multikey", n_tokens, fixed)
    hay_ids = _encode(tok, FILLER) if haystack is None else (
        tok.encode(haystack) if isinstance(haystack, str) else list(haystack))
    hay = _tile(hay_ids, n_hay)
    cuts = sorted(rng.randint(0, n_hay) for _ in range(n_keys))
    b = _Builder(tok)
    spans, prev = [], 0
    for cut, ids, text in zip(cuts, needles, needle_texts):
        b.add(hay[prev:cut])
        spans.append(b.add(ids)._replace(text=text))
        prev = cut
    b.add(hay[prev:])
    b.add(question)
    return SyntheticDoc("multikey", b.tokens, [b.add(answer)], spans, seed, tok)


def mqar(tok: Tokenizer, n_tokens: int, seed: int, n_pairs: int | None = None,
         n_queries: int | None = None) -> SyntheticDoc:
    """Key=value pairs up front, filler, then `n_queries` of the keys again, each followed by its value."""
    rng = random.Random(seed)
    n_pairs = n_pairs or max(2, min(64, n_tokens // 64))
    n_queries = n_queries or max(1, min(8, n_pairs // 2))
    letters = "abcdefghijklmnopqrstuvwxyz"
    keys: list[str] = []
    while len(keys) < n_pairs:
        k = "".join(rng.choice(letters) for _ in range(4))
        if k not in keys:
            keys.append(k)
    values = [str(rng.randint(100, 999)) for _ in keys]
    asked = rng.sample(range(n_pairs), min(n_queries, n_pairs))
    intro = "Remember the value of each key.\n"
    recall = "\nRecall the values:"
    fixed = len(_encode(tok, intro)) + len(_encode(tok, recall))
    fixed += sum(len(_encode(tok, f" {k}=")) + len(_encode(tok, v)) for k, v in zip(keys, values))
    fixed += sum(len(_encode(tok, f" {keys[i]}=")) + len(_encode(tok, values[i])) for i in asked)
    n_fill = n_tokens - fixed
    if n_fill < 0:
        raise _too_short("mqar", n_tokens, fixed)
    b = _Builder(tok)
    b.add(intro)
    needles = []
    for k, v in zip(keys, values):
        start = b.add(f" {k}=").start
        needles.append(Marked(f" {k}={v}", start, b.add(v).end))
    b.add(_tile(_encode(tok, FILLER), n_fill))
    b.add(recall)
    answers = []
    for i in asked:
        b.add(f" {keys[i]}=")
        answers.append(b.add(values[i]))
    return SyntheticDoc("mqar", b.tokens, answers, needles, seed, tok)


def copying(tok: Tokenizer, n_tokens: int, seed: int, n_words: int | None = None) -> SyntheticDoc:
    """A random sequence of `n_words` words, filler, then the same sequence again (the answer).

    Not an evaluation task: a training aid. Every token of the repeat is a copy target, against one short answer
    per pass key, and a random sequence cannot be memorised, so it trains the copying that every retrieval task
    needs (docs/results/gpu-small/NOTES.md: a small model needs ~20k pass keys before it starts copying)."""
    rng = random.Random(seed)
    n_words = n_words or max(4, min(32, n_tokens // 16))
    words = "".join(f" {rng.choice(WORDS)}" for _ in range(n_words))
    intro, ask = "Memorise this sequence:", "\nRepeat the sequence:"
    n_fill = n_tokens - len(_encode(tok, intro)) - 2 * len(_encode(tok, words)) - len(_encode(tok, ask))
    if n_fill < 0:
        raise _too_short("copy", n_tokens, n_tokens - n_fill)
    b = _Builder(tok)
    b.add(intro)
    needle = b.add(words)
    b.add(_tile(_encode(tok, FILLER), n_fill))
    b.add(ask)
    return SyntheticDoc("copy", b.tokens, [b.add(words)], [needle], seed, tok)


def needle(tok: Tokenizer, n_tokens: int, seed: int, haystack: str | Sequence[int] | None = None) -> SyntheticDoc:
    """One magic-number needle in `haystack` (multikey without distractors): the needle-in-a-haystack skill alone."""
    return multikey(tok, n_tokens, seed, haystack, n_keys=1)


GENERATORS: dict[str, Callable[..., SyntheticDoc]] = {"passkey": passkey, "multikey": multikey, "needle": needle,
                                                      "mqar": mqar, "copy": copying}
NEEDS_HAYSTACK = ("multikey", "needle")  # kinds that hide their needles in the real text they replace


def generate(kind: str, tok: Tokenizer, n_tokens: int, seed: int,
             haystack: str | Sequence[int] | None = None) -> SyntheticDoc:
    """One document of `kind` (see GENERATORS); `haystack` is used by kinds that hide needles in real text."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {', '.join(GENERATORS)}")
    if kind in NEEDS_HAYSTACK:
        return GENERATORS[kind](tok, n_tokens, seed, haystack)
    return GENERATORS[kind](tok, n_tokens, seed)
