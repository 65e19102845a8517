"""CPU checks of NSA's Triton decode kernels: the kernels under Triton's interpreter, against the reference.

Triton decides when it is imported whether kernels are interpreted, so the cases live in
tests/_triton_decode_cases.py and run in a child pytest process started with TRITON_INTERPRET=1. The child
runs once per session, started as soon as collection ends (tests/interpreted.py), and writes a JUnit report;
each test below checks its group of cases in that report.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.interpreted import check_group, wait_for

INTERPRETED_CASES = "tests/_triton_decode_cases.py"
GROUPS = ("test_dispatch", "test_compressed_attention_decode", "test_select", "test_compressed_and_select",
          "test_selected_attention_decode", "test_window_attention_decode", "test_selected_and_window",
          "test_combine", "test_public_ops", "test_generate", "test_decode_step_at")

if importlib.util.find_spec("triton") is None:  # found without importing it here
    pytest.skip("Triton is not installed on this platform", allow_module_level=True)


@pytest.fixture(scope="module")
def interpreted_run() -> dict[str, str | None]:
    return wait_for(INTERPRETED_CASES, timeout=600)


@pytest.mark.parametrize("prefix", GROUPS)
def test_decode_kernels_interpreted(interpreted_run, prefix):
    check_group(interpreted_run, prefix)


def test_every_interpreted_case_was_checked(interpreted_run):
    unchecked = [name for name in interpreted_run if not name.startswith(GROUPS)]
    assert not unchecked, f"add these interpreted cases to GROUPS: {unchecked}"
