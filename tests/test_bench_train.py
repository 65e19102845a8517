"""scripts/bench_train.py end to end on CPU: a tiny model's throughput run writes the JSON the docs' tables are
built from, with the phases of the breakdown and the memory fields (None without CUDA)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("attention", ["full", "nsa"])
def test_bench_train_writes_its_results(tmp_path, attention):
    out = tmp_path / "train.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--steps", "2", "--warmup", "1",
           "--breakdown-steps", "1", "--out", str(out), "--", "model=tiny", "model.max_seq_len=64",
           "train.batch_tokens=256", "train.micro_batch_size=2", f"attention={attention}"]
    if attention == "nsa":  # NSA's sizes scaled to a 64-token context
        cmd += ["attention.compress_block=8", "attention.compress_stride=4", "attention.select_block=8",
                "attention.num_select=3", "attention.window=16"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["model"]["attention"] == attention and r["model"]["seq_len"] == 64
    assert r["grad_accum"] == 2 and r["batch_tokens"] == 256  # 256 tokens = 2 micro-batches of 2 x 64
    assert r["tokens_per_s"] == pytest.approx(256 / r["step_time_s"])
    assert set(r["breakdown_s_per_step"]) == {"data", "forward", "backward", "optimizer"}
    assert all(v > 0 for v in r["breakdown_s_per_step"].values())
    assert r["peak_mem_gb"] is None and r["reserved_mem_gb"] is None and r["mfu"] is None
    keys = r["attended_keys"]  # mean keys per query at T = 64, per branch
    if attention == "full":
        assert keys["total"] == 32.5  # (1 + ... + 64) / 64
    else:  # the window's by hand: min(t + 1, 16) averaged over t < 64
        assert keys["win"] == (sum(range(1, 17)) + 48 * 16) / 64
        assert keys["total"] == pytest.approx(keys["cmp"] + keys["slc"] + keys["win"])


def test_kernels_by_grid_splits_one_kernel_by_its_launch_shapes(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_train

    def kernel(name, grid, dur):
        return {"cat": "kernel", "name": name, "dur": dur, "args": {"grid": grid, "block": [256, 1, 1]}}

    events = [kernel("_band_bwd_dkdv_kernel", [32, 1, 9], 1700.0), kernel("_band_bwd_dkdv_kernel", [32, 1, 9], 1800.0),
              kernel("_band_bwd_dkdv_kernel", [512, 1, 1], 600.0), kernel("gemm", [2, 66, 1], 100.0),
              {"cat": "cpu_op", "name": "aten::mm", "dur": 5000.0}]
    trace = tmp_path / "t.json.gz"
    trace.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    lines = bench_train.kernels_by_grid(trace).splitlines()
    assert len(lines) == 4  # a header, then the three (kernel, grid) groups, largest total first; no CPU op
    assert lines[1].split()[:3] == ["3.50", "2", "1750.0"] and "(32, 1, 9)" in lines[1]
    assert lines[2].split()[:3] == ["0.60", "1", "600.0"] and "(512, 1, 1)" in lines[2]
    assert lines[3].endswith("gemm")
    assert bench_train.kernels_by_grid(trace, top=1).count("\n") == 1
