"""Checkpoint files: atomic writes, rotation, discovery, clear errors."""

import pytest
import torch

from training import checkpoint as ckpt_io


def test_rotation_keeps_last_k_and_ignores_temp_files(tmp_path):
    for step in (5, 10, 15, 20):
        ckpt_io.save_checkpoint(tmp_path, step, {"step": step, "w": torch.randn(3)}, keep_last=2)
    (ckpt_io.checkpoint_dir(tmp_path) / ".step_0000025.pt.tmp123").write_bytes(b"partial write")
    found = ckpt_io.list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step_0000015.pt", "step_0000020.pt"]
    assert ckpt_io.find_resume_checkpoint(tmp_path, "auto") == found[-1]
    assert ckpt_io.load_checkpoint(found[-1])["step"] == 20


def test_resume_modes(tmp_path):
    assert ckpt_io.find_resume_checkpoint(tmp_path, "auto") is None
    assert ckpt_io.find_resume_checkpoint(tmp_path, "never") is None
    explicit = tmp_path / "elsewhere.pt"
    assert ckpt_io.find_resume_checkpoint(tmp_path, str(explicit)) == explicit


def test_corrupt_and_missing_checkpoints_fail_clearly(tmp_path):
    bad = tmp_path / "step_0000001.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="step_0000001.pt is unreadable"):
        ckpt_io.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="check train.resume"):
        ckpt_io.load_checkpoint(tmp_path / "nope.pt")


def test_compatibility_names_the_differences():
    old = {"model": {"n_layer": 4, "n_embd": 128}, "attention": {"name": "full"}, "optim": {"lr": 1.0}}
    ckpt_io.check_compatible(old, {**old, "optim": {"lr": 2.0}}, "x.pt")  # optimizer changes are allowed
    new = {"model": {"n_layer": 4, "n_embd": 256}, "attention": {"name": "nsa"}}
    expected = r"model.n_embd: checkpoint 128 vs config 256.*attention.name: checkpoint 'full' vs config 'nsa'"
    with pytest.raises(ValueError, match=expected):
        ckpt_io.check_compatible(old, new, "x.pt")
