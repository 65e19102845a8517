"""Needle generators for the `niah` and `ruler` tasks, built on data/synthetic.py's building blocks.

Every generator is a pure function of (tokenizer, length, seed, ...) and, like data/synthetic.py, builds its
prompt from separately encoded pieces, so needle spans are exact token positions and the prompt has exactly
the requested number of tokens.

- `niah_doc`: one needle at a chosen depth (% of the haystack) in prose, then a completion-style question; a
  SyntheticDoc whose last answer (the value) ends the document, exactly like data.synthetic.passkey.
- RULER-style samples (`ruler_sample`), scored with string_match_all over `outputs` (a fraction of the
  expected strings found in the model's continuation). Kinds, after RULER's synthetic.yaml:
    niah_single      1 key, 1 value, in repeated noise sentences
    niah_multikey    4 keys with 1 value each in prose; 1 asked (the others distract)
    niah_multivalue  1 key with 4 values in prose; all 4 expected
    niah_multiquery  4 keys with 1 value each in prose; all 4 asked
    vt               variable tracking: a chain VAR X1 = 12345, VAR X2 = VAR X1, ... (4 hops) in noise;
                     every variable holding the value is expected
    cwe              common words extraction: a numbered word list where 10 words appear often (30x, or 6x
                     below 4096 tokens, as RULER) and the rest rarely (3x, or 1x); the 10 are expected
  The wording of the prompts is this project's own; the task structure, needle counts, repetition counts and
  generation budgets (RULER_NEW_TOKENS) follow RULER. A RULER length counts prompt + generation budget, so the
  prompt has `n_tokens - max_new_tokens` tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from data.synthetic import FILLER, WORDS, Marked, SyntheticDoc, _Builder, _encode, _tile
from data.tokenizer import Tokenizer

# Generation budgets of RULER's task families (its constants: tokens_to_generate).
RULER_NEW_TOKENS = {"niah": 128, "vt": 30, "cwe": 120}
RULER_KINDS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe")
_SENTENCE_END = (".", "!", "?", "\n")


@dataclass
class NeedleSample:
    """A prompt (exactly the requested length) and the strings its continuation should contain."""

    kind: str
    prompt: list[int]
    outputs: list[str]
    needles: list[Marked] = field(default_factory=list)  # token spans in `prompt` of the inserted facts
    seed: int = 0


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _too_short(kind: str, n_tokens: int, fixed: int) -> ValueError:
    return ValueError(f"{kind}: {n_tokens} tokens is too short for its {fixed} fixed tokens; ask for more")


def snap_to_sentence(tok: Tokenizer, ids: Sequence[int], cut: int, window: int = 48) -> int:
    """The nearest cut at or before `cut` (within `window` tokens) that follows a sentence end, else `cut`:
    needles then start sentences instead of splitting words."""
    for j in range(cut, max(0, cut - window) - 1, -1):
        if j == 0 or tok.decode([ids[j - 1]]).rstrip(" ").endswith(_SENTENCE_END):
            return j
    return cut


def _insert(tok: Tokenizer, b: _Builder, hay: list[int], cuts: list[int], pieces: list[str]) -> list[Marked]:
    """Append `hay` with `pieces` inserted at token offsets `cuts` (sorted); return the pieces' spans."""
    spans, prev = [], 0
    for cut, text in zip(cuts, pieces):
        b.add(hay[prev:cut])
        spans.append(b.add(text))
        prev = cut
    b.add(hay[prev:])
    return spans


# ---------------------------------------------------------------------------------------------------------
# needle in a haystack (the `niah` task)

def niah_doc(tok: Tokenizer, n_tokens: int, seed: int, depth: float, haystack: Sequence[int]) -> SyntheticDoc:
    """One magic-number needle at `depth` % of the prose `haystack` (token ids, repeated if short), asked for
    at the end in completion style: '... Answer: The special magic number for K is' -> ' V'."""
    rng = random.Random(seed)
    key, value = rng.choice(WORDS), _number(rng)
    intro = "Read the text below carefully: a special magic number is hidden in it.\n\n"
    needle = f" The special magic number for {key} is {value}."
    question = (f"\n\nQuestion: What is the special magic number for {key} mentioned in the text above?"
                f" Answer: The special magic number for {key} is")
    answer = f" {value}"
    fixed = sum(len(_encode(tok, t)) for t in (intro, needle, question, answer))
    n_hay = n_tokens - fixed
    if n_hay < 0:
        raise _too_short("niah", n_tokens, fixed)
    hay = _tile(list(haystack), n_hay)
    cut = snap_to_sentence(tok, hay, round(depth / 100 * n_hay))
    b = _Builder(tok)
    b.add(intro)
    (span,) = _insert(tok, b, hay, [cut], [needle])
    b.add(question)
    return SyntheticDoc("niah", b.tokens, [b.add(answer)], [span], seed, tok)


# ---------------------------------------------------------------------------------------------------------
# RULER

def _key_words(rng: random.Random, n: int) -> list[str]:
    """n distinct keys 'adjective-noun' style (two words of data.synthetic.WORDS joined by a hyphen)."""
    if n > len(WORDS) * (len(WORDS) - 1):
        raise ValueError(f"cannot make {n} distinct keys from {len(WORDS)} words")
    keys: dict[str, None] = {}  # insertion-ordered set
    while len(keys) < n:
        keys["-".join(rng.sample(WORDS, 2))] = None
    return list(keys)


def _niah(tok: Tokenizer, n_tokens: int, seed: int, kind: str, haystack: Sequence[int] | None) -> NeedleSample:
    n_keys, n_values, n_asked = {"niah_single": (1, 1, 1), "niah_multikey": (4, 1, 1),
                                 "niah_multivalue": (1, 4, 1), "niah_multiquery": (4, 1, 4)}[kind]
    rng = random.Random(seed)
    keys = _key_words(rng, n_keys)
    values = [[_number(rng) for _ in range(n_values)] for _ in keys]
    needles = [f" One of the special magic numbers for {k} is: {v}." for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    asked = rng.sample(range(n_keys), n_asked)
    query = ", ".join(keys[i] for i in asked[:-1]) + (", and " if n_asked > 1 else "") + keys[asked[-1]]
    intro = ("Special magic numbers are hidden in the text below. Memorize them: you will be asked about them "
             "afterwards.\n")
    question = (f"\nQuestion: What are all the special magic numbers for {query} mentioned in the text above?"
                f" Answer: The special magic numbers for {query} mentioned in the text above are")
    fixed = sum(len(_encode(tok, t)) for t in (intro, question, *needles))
    n_hay = n_tokens - fixed
    if n_hay < 0:
        raise _too_short(kind, n_tokens, fixed)
    noise = kind == "niah_single" or haystack is None
    hay = _tile(_encode(tok, FILLER) if noise else list(haystack), n_hay)
    cuts = sorted(snap_to_sentence(tok, hay, rng.randint(0, n_hay)) for _ in needles)
    b = _Builder(tok)
    b.add(intro)
    spans = _insert(tok, b, hay, cuts, needles)
    b.add(question)
    return NeedleSample(kind, b.tokens, [v for i in asked for v in values[i]], spans, seed)


def _vt(tok: Tokenizer, n_tokens: int, seed: int, n_hops: int = 4) -> NeedleSample:
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n_hops + 1:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    chain = [f" VAR {names[0]} = {value}."] + [f" VAR {names[i + 1]} = VAR {names[i]}." for i in range(n_hops)]
    intro = "Memorize and track the chain of variable assignments hidden in the following text.\n"
    question = (f"\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: "
                f"According to the chain of variable assignments in the text above, {n_hops + 1} variables are "
                f"assigned the value {value}, they are:")
    fixed = sum(len(_encode(tok, t)) for t in (intro, question, *chain))
    n_hay = n_tokens - fixed
    if n_hay < 0:
        raise _too_short("vt", n_tokens, fixed)
    hay = _tile(_encode(tok, FILLER), n_hay)
    cuts = sorted(snap_to_sentence(tok, hay, rng.randint(0, n_hay)) for _ in chain)  # in order: a real chain
    b = _Builder(tok)
    b.add(intro)
    spans = _insert(tok, b, hay, cuts, chain)
    b.add(question)
    return NeedleSample("vt", b.tokens, names, spans, seed)


def _cwe(tok: Tokenizer, n_tokens: int, seed: int, n_common: int = 10) -> NeedleSample:
    rng = random.Random(seed)
    common_reps, rare_reps = (30, 3) if n_tokens >= 4096 else (6, 1)  # RULER's settings by length
    pool = _key_words(rng, 3000)
    common, rare_pool = pool[:n_common], pool[n_common:]
    question = (f"\nQuestion: What are the {n_common} most common words in the list above? Answer: The "
                f"{n_common} words that appear most often in the list are:")
    intro = "Below is a numbered list of words. Some of them appear more often than others: memorize those.\n"

    def body(n_rare: int) -> str:
        words = common * common_reps + rare_pool[:n_rare] * rare_reps
        random.Random(seed + 1).shuffle(words)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))

    budget = n_tokens - len(_encode(tok, intro)) - len(_encode(tok, question))
    fits = lambda n_rare: len(tok.encode(body(n_rare))) <= budget
    if budget < 0 or not fits(0):
        raise _too_short("cwe", n_tokens, n_tokens - budget + len(tok.encode(body(0))))
    lo, hi = 0, len(rare_pool)  # the most rare words that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    words = tok.encode(body(lo))
    b = _Builder(tok)
    b.add(_tile(_encode(tok, FILLER), budget - len(words)))  # noise before the task fills the exact length
    b.add(intro)
    span = b.add(words)._replace(text=body(lo))
    b.add(question)
    return NeedleSample("cwe", b.tokens, common, [span], seed)


def new_tokens_for(kind: str) -> int:
    """RULER's generation budget of a kind."""
    return RULER_NEW_TOKENS["niah" if kind.startswith("niah") else kind]


def ruler_sample(kind: str, tok: Tokenizer, n_tokens: int, seed: int,
                 haystack: Sequence[int] | None = None) -> NeedleSample:
    """A RULER-style prompt of exactly `n_tokens` tokens (`haystack`: prose token ids for niah_multi*)."""
    makers: dict[str, Callable[[], NeedleSample]] = {
        "vt": lambda: _vt(tok, n_tokens, seed),
        "cwe": lambda: _cwe(tok, n_tokens, seed),
    }
    if kind.startswith("niah_") and kind in RULER_KINDS:
        return _niah(tok, n_tokens, seed, kind, haystack)
    if kind not in makers:
        raise ValueError(f"unknown RULER task {kind!r}: choose from {list(RULER_KINDS)}")
    return makers[kind]()
