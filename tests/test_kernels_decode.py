"""CPU checks of NSA's Triton decode kernels: the kernels under Triton's interpreter, against the reference.

Triton decides when it is imported whether kernels are interpreted, so the cases live in
tests/_triton_decode_cases.py and run in a child pytest process started with TRITON_INTERPRET=1. The child
runs once per module and writes a JUnit report; each test below checks its group of cases in that report.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CASES = "tests/_triton_decode_cases.py"
GROUPS = ("test_dispatch", "test_compressed_attention_decode", "test_select", "test_selected_attention_decode",
          "test_window_attention_decode", "test_public_ops", "test_generate")

if importlib.util.find_spec("triton") is None:  # found without importing it here
    pytest.skip("Triton is not installed on this platform", allow_module_level=True)


@pytest.fixture(scope="module")
def interpreted_run(tmp_path_factory) -> dict[str, str | None]:
    """Run the interpreted cases once; return {case name: None if passed, else its failure text}."""
    report = tmp_path_factory.mktemp("triton_decode") / "report.xml"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "pytest", CASES, "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if not report.exists():
        pytest.fail(f"the interpreted cases did not run (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
                    f"\n{proc.stderr[-4000:]}")
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        text = None if problem is None else problem.get("message", "") + "\n" + (problem.text or "")
        results[case.get("name")] = text
    assert results, f"no case ran:\n{proc.stdout[-4000:]}"
    return results


@pytest.mark.parametrize("prefix", GROUPS)
def test_decode_kernels_interpreted(interpreted_run, prefix):
    group = {name: err for name, err in interpreted_run.items() if name.startswith(prefix)}
    assert group, f"no interpreted case named {prefix}*"
    failed = {name: err for name, err in group.items() if err is not None}
    assert not failed, "\n\n".join(f"{name}:\n{err[-3000:]}" for name, err in failed.items())


def test_every_interpreted_case_was_checked(interpreted_run):
    unchecked = [name for name in interpreted_run if not name.startswith(GROUPS)]
    assert not unchecked, f"add these interpreted cases to GROUPS: {unchecked}"
