"""LongBench and RULER metrics against hand-computed cases, including LongBench's normalisation quirks."""

import pytest

from evaluation.metrics import (
    classification_score,
    code_sim_score,
    count_score,
    e_bucket,
    longbench_e_scores,
    longbench_score,
    normalize_answer,
    normalize_zh_answer,
    qa_f1_score,
    qa_f1_zh_score,
    retrieval_score,
    retrieval_zh_score,
    rouge_score,
    rouge_zh_score,
    ruler_postprocess,
    sample_score,
    string_match_all,
    string_match_part,
)

TREC = ["Abbreviation", "Entity", "Description", "Human", "Location", "Numeric"]


def test_english_normalisation():
    # punctuation goes first, so "An-apple" becomes "anapple" and is no longer an article
    assert normalize_answer("An-apple, the end.") == "anapple end"
    assert normalize_answer("  The  Eiffel\tTower!  ") == "eiffel tower"
    assert normalize_answer("a theory of an idea") == "theory of idea"


def test_qa_f1():
    assert qa_f1_score("The Eiffel Tower!", "eiffel tower") == 1.0
    # tokens [big, red, apple] vs [red, apple]: P = 2/3, R = 1 -> F1 = 0.8
    assert qa_f1_score("a big red apple", "the red apple") == pytest.approx(0.8)
    assert qa_f1_score("nothing", "something else") == 0.0
    assert qa_f1_score("the", "a") == 0.0  # both normalise to nothing


def test_qa_f1_zh_segments_with_jieba():
    assert normalize_zh_answer("北京，Ｈｉ！ a b") == "北京ｈｉab"
    assert qa_f1_zh_score("北京。", "北京") == 1.0  # "。" is a word that normalises to "" and is dropped
    # jieba: 我 / 爱 / 北京 vs 北京: P = 1/3, R = 1 -> F1 = 0.5
    assert qa_f1_zh_score("我爱北京", "北京") == pytest.approx(0.5)


def test_rouge_l():
    # LCS 3 of 3 predicted and 4 reference words: P = 1, R = 3/4 -> F = 6/7 (the package adds a 1e-8 epsilon)
    assert rouge_score("the cat sat", "the cat sat down") == pytest.approx(6 / 7, abs=1e-6)
    assert rouge_score("", "the cat") == 0.0  # the package raises on an empty hypothesis: LongBench scores 0
    # jieba words 今天天气 / 很 / 好 vs 今天天气 / 好: LCS 2, P = 2/3, R = 1 -> F = 0.8
    assert rouge_zh_score("今天天气很好", "今天天气好") == pytest.approx(0.8, abs=1e-6)


def test_classification_partial_matches():
    assert classification_score("Entity", "Entity", all_classes=TREC) == 1.0
    assert classification_score("Entity or Description", "Entity", all_classes=TREC) == 0.5
    assert classification_score("no idea", "Entity", all_classes=TREC) == 0.0  # no difflib fallback (quirk)
    assert classification_score("Description", "Entity", all_classes=TREC) == 0.0
    # matches [abc, ab, a, x]; "ab" (a strict substring of the answer) is removed while iterating, which skips
    # "a": [abc, a, x] remain -> 1/3 (removing every substring would give 1/2)
    assert classification_score("abc x", "abc", all_classes=["abc", "ab", "a", "x"]) == pytest.approx(1 / 3)


def test_retrieval_and_count_with_several_numbers():
    assert retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert retrieval_score("Paragraph 3, not Paragraph 12", "Paragraph 3") == 0.5
    assert retrieval_score("3 and again 3", "Paragraph 3") == 1.0
    assert retrieval_score("I do not know", "Paragraph 3") == 0.0
    assert retrieval_score("Paragraph 13", "Paragraph 3") == 0.0  # whole numbers, not digits
    assert retrieval_zh_score("答案是段落5", "段落5") == 1.0
    assert retrieval_zh_score("段落5或段落6", "段落5") == 0.5
    with pytest.raises(ValueError, match="does not name a paragraph"):
        retrieval_score("1", "no paragraph here")
    assert count_score("There are 7 unique paragraphs out of 12", "7") == 0.5
    assert count_score("7", 7) == 1.0


def test_code_similarity():
    # the first line without ` # // is compared
    assert code_sim_score("\n# comment\n    return x + 1\nmore", "    return x + 1") == 1.0
    assert code_sim_score("```python\nreturn x", "return x") == 1.0
    assert code_sim_score("abcd", "abce") == pytest.approx(0.75)  # ratio 2 * 3 / 8, an integer percent
    assert code_sim_score("# only comments", "x = 1") == 0.0


def test_task_scoring_first_line_and_best_answer():
    assert sample_score("triviaqa", "Paris\nLondon", ["Paris"], None) == 1.0  # first line only
    assert sample_score("qasper", "Paris\nLondon", ["Paris"], None) == pytest.approx(2 / 3)
    assert sample_score("trec", "\nEntity\nDescription", ["Entity"], TREC) == 1.0
    # best over ground truths, then mean x 100 rounded to 2 decimals
    assert longbench_score("hotpotqa", ["Paris", "Rome"], [["x", "paris"], ["london"]], None) == 50.0
    assert longbench_score("passage_count", ["3", "3 or 4", "4"], [["3"], ["3"], ["3"]], None) == 50.0
    # "a" is an article: F1 of [b, c] vs [b] = 2 * (1/2 * 1) / (3/2) = 2/3
    assert longbench_score("hotpotqa", ["a b c"], [["a b"]], None) == 66.67


def test_longbench_e_buckets():
    assert [e_bucket(n) for n in (0, 3999, 4000, 7999, 8000)] == ["0-4k", "0-4k", "4-8k", "4-8k", "8k+"]
    scores = longbench_e_scores("hotpotqa", ["y", "b", "c"], [["y"], ["x"], ["c"]], [100, 5000, 9000], None)
    assert scores == {"0-4k": 100.0, "4-8k": 0.0, "8k+": 100.0}
    assert longbench_e_scores("hotpotqa", ["y"], [["y"]], [10], None)["8k+"] is None


def test_ruler_string_match():
    assert string_match_all(["The numbers are 123 and 456."], [["123", "456", "789"]]) == 66.67
    assert string_match_all(["abc", "nothing"], [["ABC"], ["x"]]) == 50.0  # case-insensitive
    assert string_match_part(["The numbers are 123 and 456."], [["123", "456", "789"]]) == 100.0
    assert ruler_postprocess("  answer:\x01 42\t") == "answer:\n 42"
