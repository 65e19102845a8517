"""Run Triton kernel cases under the interpreter in a child pytest process, and check them group by group.

Triton decides when it is imported whether kernels are interpreted, so interpreted cases live in their own
module (tests/_triton_*_cases.py) and run in a child process started with TRITON_INTERPRET=1: whatever the
parent imported cannot leak into it. The child writes a JUnit report that the parent's tests read.

The children are the slow part of the suite (minutes each, one CPU core apiece), so conftest.py starts every
child the collected tests will need as soon as collection ends (`start_for`) and moves the tests that read them
to the end: the children run while the parent works through everything else. A test module names its cases in
INTERPRETED_CASES and its tests take the `interpreted_run` fixture, which waits for that child (`wait_for`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


REPORT, STDOUT, STDERR = "report.xml", "stdout.txt", "stderr.txt"  # the files in a child's folder


@dataclass
class Child:
    """One child pytest run of a cases module: its process and the folder holding its report and output."""

    proc: subprocess.Popen
    folder: tempfile.TemporaryDirectory

    @property
    def report(self) -> Path:
        return Path(self.folder.name) / REPORT

    def output(self) -> str:
        """The tail of the child's stdout and stderr, for a failure message."""
        return "\n".join((Path(self.folder.name) / name).read_text(errors="replace")[-4000:]
                         for name in (STDOUT, STDERR))


_children: dict[str, Child] = {}  # cases module -> its child, started once per session


def _child(cases: str) -> Child:
    """The child running `cases`, started now if it was not yet."""
    if cases not in _children:
        folder = tempfile.TemporaryDirectory(prefix="interpreted_")
        # one thread each: the children share the machine's cores with the parent suite and with each other
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "pytest", cases, "-q", "-p", "no:cacheprovider",
               f"--junitxml={Path(folder.name) / REPORT}"]
        with open(Path(folder.name) / STDOUT, "w") as out, open(Path(folder.name) / STDERR, "w") as err:
            _children[cases] = Child(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err), folder)
    return _children[cases]


def start_for(items: list[pytest.Item]) -> None:
    """Start, in the background, the child of every cases module that one of `items` (the collected tests) reads
    through the `interpreted_run` fixture."""
    for item in items:
        cases = getattr(getattr(item, "module", None), "INTERPRETED_CASES", None)
        if cases and "interpreted_run" in getattr(item, "fixturenames", ()):
            _child(cases)


def stop_all() -> None:
    """Stop children still running (an interrupted session) and remove their folders."""
    for child in _children.values():
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
        child.folder.cleanup()
    _children.clear()


def wait_for(cases: str, timeout: int) -> dict[str, str | None]:
    """Wait for the child running `cases` (a path relative to the repo; started now if it was not yet) and read its
    report: {case name: None if passed, else its failure text}. `timeout`: seconds to wait from now."""
    child = _child(cases)
    try:
        child.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()
        pytest.fail(f"the interpreted cases {cases} ran past {timeout} s:\n{child.output()}")
    if not child.report.exists():
        pytest.fail(f"the interpreted cases {cases} did not run (exit {child.proc.returncode}):\n{child.output()}")
    found = {}
    for case in ET.parse(child.report).getroot().iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        found[case.get("name")] = None if problem is None else problem.get("message", "") + "\n" + (problem.text or "")
    assert found, f"no case of {cases} ran:\n{child.output()}"
    return found


def check_group(results: dict[str, str | None], prefix: str) -> None:
    """Fail with every failure text of the interpreted cases whose name starts with `prefix`."""
    group = {name: err for name, err in results.items() if name.startswith(prefix)}
    assert group, f"no interpreted case named {prefix}*"
    failed = {name: err for name, err in group.items() if err is not None}
    assert not failed, "\n\n".join(f"{name}:\n{err[-3000:]}" for name, err in failed.items())
