"""Atomic writes: an interrupted write leaves the previous file intact and no temp file behind."""

import pytest

from common.files import atomic_write, write_text_atomic


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new contents")
    assert path.read_text() == "new contents"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_interrupted_write_keeps_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"partial")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
