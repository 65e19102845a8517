"""Small statistics for comparing two models on the same samples: confidence intervals and paired tests.

Everything is plain numpy and deterministic (bootstraps use a fixed seed), so a report regenerated from the
same outputs has the same numbers.
- `wilson(k, n)`: 95% Wilson score interval of an accuracy k / n (sensible at n = 4 and at k = 0 or n).
- `paired_bootstrap(a, b)`: mean of b - a over paired samples with a percentile bootstrap interval.
- `mcnemar_exact(a, b)`: exact two-sided McNemar p-value for paired right/wrong outcomes.
- `t_interval(xs)`: mean and Student-t 95% interval (the spread over seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054
# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal quantile is within 4%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval (lo, hi) of a proportion with k successes out of n; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     block: int = 1) -> dict[str, float | int | None]:
    """Mean paired difference b - a and its 95% percentile-bootstrap interval.

    a, b: the two models' scores on the same samples, in the same order. block > 1 resamples contiguous blocks
    of that many pairs (a moving-block bootstrap, for autocorrelated series such as consecutive training steps).
    Returns {"diff", "lo", "hi", "n"}; lo = hi = diff when all differences are equal, None values when n == 0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal lengths, got {len(a)} and {len(b)}")
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(d)
    if n == 0:
        return {"diff": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    block = max(1, min(block, n))
    n_blocks = math.ceil(n / block)
    starts = rng.integers(0, n - block + 1, size=(n_boot, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": n}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """Exact two-sided McNemar test on paired binary outcomes (a: model A right?, b: model B right?).

    Only discordant pairs count: a_only (A right, B wrong) and b_only. p = P(|X - m/2| >= |a_only - m/2|)
    for X ~ Binomial(m = a_only + b_only, 1/2); p = 1 when there is no discordant pair."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal lengths, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    m = a_only + b_only
    k = min(a_only, b_only)
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": p}


def t_interval(xs: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation and Student-t 95% interval of the mean; sd/lo/hi are None for n < 2."""
    n = len(xs)
    if n == 0:
        return {"mean": None, "sd": None, "lo": None, "hi": None, "n": 0}
    mean = float(np.mean(xs))
    if n < 2:
        return {"mean": mean, "sd": None, "lo": None, "hi": None, "n": 1}
    sd = float(np.std(xs, ddof=1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else Z95
    half = t * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "n": n}
