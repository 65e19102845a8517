"""The shell scripts that drive the lent GPU machine: each parses, and every part gpu_all.sh names exists (a typo
there would only show up as a lost device call)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_shell_script_parses(script):
    r = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_gpu_all_parts_name_existing_scripts():
    text = (SCRIPTS / "gpu_all.sh").read_text()
    table = text[text.index("declare -A SCRIPT=("):text.index("declare -A WIDE")]
    parts = dict(re.findall(r"\[(\w+)\]=(\S+?\.sh)", table))
    assert {"kernels", "decode", "cudnn", "tests"} <= parts.keys()
    for part, script in parts.items():
        assert (SCRIPTS / script).is_file(), f"gpu_all.sh part {part}: scripts/{script} does not exist"
        assert f"#   {part} " in text, f"gpu_all.sh part {part} is not listed in its header"
