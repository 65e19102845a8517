"""Learning-rate schedules are pure functions of the step."""

import math

import pytest

from training.config import OptimConfig
from training.schedule import lr_at


def test_cosine_warmup_peak_and_floor():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, schedule="cosine")
    assert lr_at(0, 110, cfg) == pytest.approx(0.1)
    assert lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(10, 110, cfg) == pytest.approx(1.0)
    assert lr_at(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, 110, cfg) == pytest.approx(0.1)
    values = [lr_at(s, 110, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_wsd_stable_then_linear_decay():
    cfg = OptimConfig(lr=2.0, min_lr_ratio=0.0, warmup_steps=5, schedule="wsd", decay_frac=0.2)
    total = 100
    assert lr_at(2, total, cfg) == pytest.approx(2.0 * 3 / 5)
    assert all(lr_at(s, total, cfg) == 2.0 for s in range(5, 80))
    assert lr_at(80, total, cfg) == pytest.approx(2.0 * (1 - 1 / 20))
    assert lr_at(89, total, cfg) == pytest.approx(1.0)
    assert lr_at(99, total, cfg) == pytest.approx(0.0)


def test_constant_and_unknown():
    cfg = OptimConfig(lr=0.5, warmup_steps=0, schedule="constant")
    assert {lr_at(s, 50, cfg) for s in range(50)} == {0.5}
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_at(0, 10, OptimConfig(schedule="linear", warmup_steps=0))
