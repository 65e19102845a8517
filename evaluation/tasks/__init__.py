"""Task registry: `tasks=[...]` in the eval config names entries of TASKS; each runs on an EvalContext and returns
its metrics for results.json (and writes its own files under OUT/<task>/)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evaluation.tasks.common import EvalContext
from evaluation.tasks.longbench import run_longbench
from evaluation.tasks.mqar import run_mqar
from evaluation.tasks.needle_grid import run_niah, run_passkey
from evaluation.tasks.ppl_position import run_ppl_position
from evaluation.tasks.ruler import run_ruler

TASKS: dict[str, Callable[[EvalContext], dict[str, Any]]] = {
    "ppl_position": run_ppl_position,
    "passkey": run_passkey,
    "niah": run_niah,
    "ruler": run_ruler,
    "mqar": run_mqar,
    "longbench": run_longbench,
}

__all__ = ["TASKS", "EvalContext"]
