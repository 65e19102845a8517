"""Run Triton kernel cases under the interpreter in a child pytest process, and check them group by group.

Triton decides when it is imported whether kernels are interpreted, so interpreted cases live in their own
module (tests/_triton_*_cases.py) and run in a child process started with TRITON_INTERPRET=1: whatever the
parent imported cannot leak into it. The child writes a JUnit report that the parent's tests read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_interpreted(cases: str, report_dir: Path, timeout: int) -> dict[str, str | None]:
    """Run `cases` (a path relative to the repo) once; {case name: None if passed, else its failure text}."""
    report = report_dir / "report.xml"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "pytest", cases, "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
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


def check_group(results: dict[str, str | None], prefix: str) -> None:
    """Fail with every failure text of the interpreted cases whose name starts with `prefix`."""
    group = {name: err for name, err in results.items() if name.startswith(prefix)}
    assert group, f"no interpreted case named {prefix}*"
    failed = {name: err for name, err in group.items() if err is not None}
    assert not failed, "\n\n".join(f"{name}:\n{err[-3000:]}" for name, err in failed.items())
