"""CPU checks of the Triton NSA kernels: the same kernels under Triton's interpreter, against the reference.

Triton decides when it is imported whether kernels are interpreted, so the cases live in
tests/_triton_interpret_cases.py and run in a child pytest process started with TRITON_INTERPRET=1
(whatever this process has imported cannot leak into it). The child runs once per session and writes a
JUnit report; each test below checks its group of cases in that report and shows their failures.
Runtime: about a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.interpreted import check_group, run_interpreted

CASES = "tests/_triton_interpret_cases.py"

if importlib.util.find_spec("triton") is None:  # found without importing it here
    pytest.skip("Triton is not installed on this platform", allow_module_level=True)


@pytest.fixture(scope="module")
def interpreted_run(tmp_path_factory) -> dict[str, str | None]:
    return run_interpreted(CASES, tmp_path_factory.mktemp("triton_interpret"), timeout=900)


def test_dispatch_goes_to_triton_under_the_interpreter(interpreted_run):
    check_group(interpreted_run, "test_dispatch")


def test_compressed_attention_kernel(interpreted_run):
    check_group(interpreted_run, "test_compressed_attention")


def test_select_blocks_kernel(interpreted_run):
    check_group(interpreted_run, "test_select_blocks")


def test_selected_attention_kernel(interpreted_run):
    check_group(interpreted_run, "test_selected_attention")


def test_window_attention_kernel(interpreted_run):
    check_group(interpreted_run, "test_window_attention")


def test_float32_and_torch_compile(interpreted_run):
    check_group(interpreted_run, "test_float32")
    check_group(interpreted_run, "test_torch_compile")


def test_every_interpreted_case_was_checked(interpreted_run):
    prefixes = ("test_dispatch", "test_compressed_attention", "test_select_blocks", "test_selected_attention",
                "test_window_attention", "test_float32", "test_torch_compile")
    unchecked = [name for name in interpreted_run if not name.startswith(prefixes)]
    assert not unchecked, f"add these interpreted cases to a group above: {unchecked}"
