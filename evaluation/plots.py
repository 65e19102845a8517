"""Figures (matplotlib, Agg backend: no display needed): loss by position, needle heatmaps (one model, two side by
side, like Figure 5 of the NSA paper: depth on y, context length on x, accuracy 0-1)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HEATMAP_CMAP = "RdYlGn"  # red = missed, green = found


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_loss_by_position(loss: Sequence[float], bucket_edges: Sequence[int], bucket_loss: Sequence[float],
                          train_length: int, title: str, path: Path) -> Path:
    """Per-position mean loss (light), its bucket means (steps) and the training length (dashed)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    pos = np.arange(1, len(loss) + 1)
    ax.plot(pos, loss, color="tab:blue", alpha=0.3, lw=0.8, label="per position")
    ax.stairs(bucket_loss, np.asarray(bucket_edges) + 1, color="tab:blue", lw=2, label="bucket mean")
    if train_length < len(loss):
        ax.axvline(train_length, color="gray", ls="--", lw=1, label=f"training length {train_length}")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _heatmap(ax, grid: np.ndarray, depths: Sequence[float], lengths: Sequence[int], title: str):
    im = ax.imshow(grid, cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (%)")
    ax.set_title(title)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
    return im


def _as_array(grid: Sequence[Sequence[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)


def plot_heatmap(grid: Sequence[Sequence[float | None]], depths: Sequence[float], lengths: Sequence[int],
                 title: str, path: Path) -> Path:
    """Accuracy grid [depth][length] in [0, 1]; missing cells (None) are blank."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(lengths), 1.2 + 0.45 * len(depths)))
    im = _heatmap(ax, _as_array(grid), depths, lengths, title)
    fig.colorbar(im, ax=ax, label="accuracy")
    return _save(fig, path)


def plot_heatmaps_side_by_side(panels: Sequence[tuple[str, Sequence[Sequence[float | None]], Sequence[float],
                                                      Sequence[int]]], path: Path) -> Path:
    """Several (title, grid, depths, lengths) heatmaps in one row with one shared 0-1 colour bar."""
    widest = max(len(p[3]) for p in panels)
    tallest = max(len(p[2]) for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.2 + 0.8 * widest), 1.4 + 0.45 * tallest),
                             squeeze=False)
    im = None
    for ax, (title, grid, depths, lengths) in zip(axes[0], panels):
        im = _heatmap(ax, _as_array(grid), depths, lengths, title)
    fig.colorbar(im, ax=list(axes[0]), label="accuracy")
    return _save(fig, path)
