"""Scoring functions: LongBench (v1) metrics and RULER's string match.

LongBench. Each metric takes (prediction, ground_truth, all_classes) and returns a score in [0, 1]; a sample's
score is the best over its ground truths, a task's score the mean x 100 rounded to 2 decimals. The definitions
(and their quirks) follow LongBench's metrics.py / eval.py exactly so that the same predictions get the same
scores, with the same packages: `rouge` (Rouge-L F), `jieba` (Chinese word segmentation), `fuzzywuzzy` (edit
similarity; like LongBench's requirements, without python-Levenshtein, i.e. difflib's ratio). Quirks kept:
- English answers are normalised by lower-casing, deleting ASCII punctuation, then the words a/an/the, then
  collapsing whitespace; Chinese ones are segmented with jieba, then each word loses CJK + ASCII punctuation
  and whitespace, and empty words are dropped.
- classification: every class name that occurs in the prediction is a match; matches that are a strict
  substring of the ground truth are then removed *while iterating over the same list*, so the match right
  after a removed one is never examined; the score is 1 / #matches if the ground truth is among them, else 0
  (LongBench's difflib fallback for "no match" sits behind `list != 0`, which is always true: never used).
- retrieval / count: every number in the prediction is a guess; score = correct guesses / all guesses.
- code: the first line (after leading newlines) that holds none of "`", "#", "//" is compared with
  fuzz.ratio (an integer percentage) / 100.
- Rouge-L: any exception of the rouge package (empty or degenerate text) scores 0.
- trec, triviaqa, samsum, lsht: only the first line of the prediction is scored.
- LongBench-E buckets by the sample's `length` field: 0-4k, 4-8k, 8k+ (an empty bucket is None here; LongBench
  writes NaN, which is not valid JSON).

RULER. `string_match_all`: per sample, the fraction of reference strings found (case-insensitively) as
substrings of the prediction; `string_match_part`: 1 if any is found. Mean x 100, rounded to 2 decimals.
Predictions are first cleaned like RULER does: control characters become newlines, then strip.
"""

from __future__ import annotations

import logging
import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import jieba
from rouge import Rouge

with warnings.catch_warnings():  # "Using slow pure-python SequenceMatcher": that is LongBench's setting
    warnings.simplefilter("ignore")
    from fuzzywuzzy import fuzz

jieba.setLogLevel(logging.WARNING)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = set(string.punctuation)
# LongBench's Chinese punctuation set (full-width forms, CJK brackets and quotes, dashes, ellipsis, '.').
_CJK_PUNCT = set(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_NUMBER = re.compile(r"\d+")


def normalize_answer(s: str) -> str:
    """English normalisation: lower, drop ASCII punctuation, drop articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _ASCII_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def normalize_zh_answer(s: str) -> str:
    """Chinese normalisation: lower, drop ASCII and CJK punctuation, remove all whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _ASCII_PUNCT and ch not in _CJK_PUNCT)
    return "".join(s.split())


def token_f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    """F1 of the multiset overlap of two token lists (0 when nothing overlaps)."""
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _zh_words(text: str) -> list[str]:
    words = (normalize_zh_answer(w) for w in jieba.cut(text, cut_all=False))
    return [w for w in words if w]


def qa_f1_zh_score(prediction: str, ground_truth: str, **_) -> float:
    return token_f1(_zh_words(prediction), _zh_words(ground_truth))


def rouge_score(prediction: str, ground_truth: str, **_) -> float:
    """Rouge-L F-measure of the `rouge` package; 0 when it raises (empty or degenerate text)."""
    try:
        return Rouge().get_scores([prediction], [ground_truth], avg=True)["rouge-l"]["f"]
    except Exception:  # LongBench scores any failure of the package as 0
        return 0.0


def rouge_zh_score(prediction: str, ground_truth: str, **_) -> float:
    """Rouge-L over jieba words (joined by spaces, since the rouge package splits on whitespace)."""
    seg = lambda t: " ".join(jieba.cut(t, cut_all=False))
    return rouge_score(seg(prediction), seg(ground_truth))


def classification_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None, **_) -> float:
    if not all_classes:
        raise ValueError("classification needs the sample's all_classes (the list of class names)")
    matches = [c for c in all_classes if c in prediction]
    i = 0
    while i < len(matches):  # LongBench removes from the list it iterates over: the next item is skipped
        m = matches[i]
        if m in ground_truth and m != ground_truth:
            matches.remove(m)
        i += 1
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _guess_share(prediction: str, target: str) -> float:
    guesses = _NUMBER.findall(prediction)
    return 0.0 if not guesses else sum(g == target for g in guesses) / len(guesses)


def count_score(prediction: str, ground_truth: str, **_) -> float:
    return _guess_share(prediction, str(ground_truth))


def _retrieval(pattern: str) -> Callable[..., float]:
    regex = re.compile(pattern)

    def score(prediction: str, ground_truth: str, **_) -> float:
        found = regex.findall(ground_truth)
        if not found:
            raise ValueError(f"retrieval answer {ground_truth!r} does not name a paragraph (pattern {pattern!r})")
        return _guess_share(prediction, found[0])

    return score


retrieval_score = _retrieval(r"Paragraph (\d+)")
retrieval_zh_score = _retrieval(r"段落(\d+)")


def code_sim_score(prediction: str, ground_truth: str, **_) -> float:
    line = next((x for x in prediction.lstrip("\n").split("\n") if not any(m in x for m in ("`", "#", "//"))), "")
    return fuzz.ratio(line, ground_truth) / 100


METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1_score,
    "qa_f1_zh": qa_f1_zh_score,
    "rouge": rouge_score,
    "rouge_zh": rouge_zh_score,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "retrieval_zh": retrieval_zh_score,
    "count": count_score,
    "code_sim": code_sim_score,
}

# Which metric scores each LongBench task, and the tasks scored on the prediction's first line only.
TASK_METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "dureader": "rouge_zh",
    "gov_report": "rouge", "qmsum": "rouge", "multi_news": "rouge", "vcsum": "rouge_zh",
    "trec": "classification", "triviaqa": "qa_f1", "samsum": "rouge", "lsht": "classification",
    "passage_retrieval_en": "retrieval", "passage_count": "count", "passage_retrieval_zh": "retrieval_zh",
    "lcc": "code_sim", "repobench-p": "code_sim",
}  # fmt: skip
FIRST_LINE_TASKS = frozenset({"trec", "triviaqa", "samsum", "lsht"})
E_BUCKETS = ("0-4k", "4-8k", "8k+")


def sample_score(task: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None) -> float:
    """One sample of LongBench task `task` (a LongBench name): best score over its ground truths."""
    if task in FIRST_LINE_TASKS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = METRICS[TASK_METRIC[task]]
    return max([0.0, *(metric(prediction, gt, all_classes=all_classes) for gt in answers)])


def longbench_score(task: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
                    all_classes: Sequence[str] | None) -> float:
    """A task's score on LongBench's 0-100 scale (mean of sample scores x 100, rounded to 2 decimals)."""
    if not predictions:
        raise ValueError(f"{task}: no predictions to score")
    total = sum(sample_score(task, p, a, all_classes) for p, a in zip(predictions, answers))
    return round(100 * total / len(predictions), 2)


def e_bucket(length: int) -> str:
    return "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"


def longbench_e_scores(task: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
                       lengths: Sequence[int], all_classes: Sequence[str] | None) -> dict[str, float | None]:
    """LongBench-E: the task's score within each length bucket (None for an empty bucket)."""
    buckets: dict[str, list[float]] = {b: [] for b in E_BUCKETS}
    for p, a, n in zip(predictions, answers, lengths):
        buckets[e_bucket(n)].append(sample_score(task, p, a, all_classes))
    return {b: round(100 * sum(s) / len(s), 2) if s else None for b, s in buckets.items()}


# ---------------------------------------------------------------------------------------------------------
# RULER

_CONTROL = re.compile(r"[\x00-\x1f]")


def ruler_postprocess(prediction: str) -> str:
    """RULER's cleaning: control characters -> newline, then strip."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of references contained in the prediction (case-insensitive), x 100."""
    if not predictions:
        raise ValueError("string_match_all: no predictions")
    per = [sum(r.lower() in p.lower() for r in refs) / len(refs) for p, refs in zip(predictions, references)]
    return round(100 * sum(per) / len(predictions), 2)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over samples of 1 if any reference is contained in the prediction (case-insensitive), x 100."""
    if not predictions:
        raise ValueError("string_match_part: no predictions")
    per = [float(any(r.lower() in p.lower() for r in refs)) for p, refs in zip(predictions, references)]
    return round(100 * sum(per) / len(predictions), 2)
