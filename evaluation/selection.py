"""Did NSA's block selection find the needle? A diagnostic of the retrieval grids (passkey, niah).

The query that predicts an answer's first token is the prompt's last position. During generation's prefill
forward, `SelectionRecorder` keeps the selection blocks that query chose in every NSA layer and KV head, and its
branch gates (`NativeSparseAttention.record_selection`). Per document it then gives:
- needle_selected: the fraction of (layer, KV head) pairs whose chosen blocks overlap the needle's token span.
  Forced blocks count: a needle in the first block or in the query's local blocks is always "selected";
- needle_in_window: whether the needle overlaps that query's sliding window (the window branch sees it without
  any selection);
- gate_slc, gate_win: the selected and window branches' gates, mean over layers and query heads.

A needle outside the window that the selection misses is invisible to the model but for the compression
branch's summary of it; one that is selected but still answered wrongly points at what the model does with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from data.synthetic import Marked
from model.attention.nsa import needle_block_hits, nsa_layers, set_selection_recording


class SelectionRecorder:
    """Records, at each prefill forward, what the last prompt position of every row chose (see module doc).

    Use as a context manager around generation, passing `on_prefill` as its callback; falsy (and recording
    nothing) when the model has no NSA layer."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = nsa_layers(model)
        self.chosen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # prompt index -> (ids, gates)

    def __bool__(self) -> bool:
        return bool(self.layers)

    def __enter__(self) -> SelectionRecorder:
        set_selection_recording(self.layers, True)
        return self

    def __exit__(self, *exc: object) -> None:
        set_selection_recording(self.layers, False)

    def on_prefill(self, batch: Sequence[int]) -> None:
        """After the prefill forward of the prompts `batch` (their indices, in row order): keep each row's
        selected block ids [layers, Hkv, n] and gates [layers, Hq, 3]."""
        ids = torch.stack([layer.selection[:, -1] for layer in self.layers], dim=1).cpu()
        gates = torch.stack([layer.gates[:, -1] for layer in self.layers], dim=1).float().cpu()
        for row, i in enumerate(batch):
            self.chosen[i] = (ids[row], gates[row])

    def needle_stats(self, index: int, needle: Marked, prompt_len: int) -> dict[str, Any]:
        """needle_selected, needle_in_window, gate_slc, gate_win of prompt `index` (module doc)."""
        ids, gates = self.chosen[index]
        cfg = self.layers[0].attn_cfg  # every layer shares one attention config
        return {
            "needle_selected": needle_block_hits(ids, needle.start, needle.end, cfg.select_block).float().mean().item(),
            "needle_in_window": needle.end > prompt_len - cfg.window,
            "gate_slc": gates[..., 1].mean().item(),
            "gate_win": gates[..., 2].mean().item(),
        }
