"""scripts/plot_probe_runs.py: probe curves of arbitrary runs (run folders or saved JSON) on one figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "plot_probe_runs.py"), *args],
                          capture_output=True, text=True, cwd=REPO)


def test_curves_from_a_run_folder_and_from_saved_json(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": 10, "loss": 5.0}, {"step": 100, "loss": 3.0, "val_loss": 3.1, "val_probe_passkey": 2.4},
            {"step": 200, "loss": 2.0, "val_probe_passkey": 0.7, "val_probe_needle": 4.0}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps({"per_seed": {"1": {"passkey": {"nsa": {"step": [100, 200], "loss": [2.5, 2.4]}}}}}))
    out = tmp_path / "fig" / "probes.png"
    done = run("--out", str(out), f"new={run_dir}", f"old={saved}:per_seed/1/passkey/nsa")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["kind"] == "passkey" and data["runs"] == {"new": {"step": [100, 200], "loss": [2.4, 0.7]},
                                                          "old": {"step": [100, 200], "loss": [2.5, 2.4]}}
    needle = run("--kind", "needle", "--out", str(tmp_path / "n.png"), f"new={run_dir}")
    assert needle.returncode == 0 and json.loads((tmp_path / "n.json").read_text())["runs"]["new"]["loss"] == [4.0]
    val = run("--kind", "val", "--out", str(tmp_path / "v.png"), f"new={run_dir}")
    assert val.returncode == 0 and json.loads((tmp_path / "v.json").read_text())["runs"]["new"] == {"step": [100],
                                                                                                  "loss": [3.1]}


def test_bad_runs_get_one_line_errors(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert "logged no val_probe_passkey" in run("--out", str(tmp_path / "a.png"), f"x={tmp_path}").stderr
    assert "logged no val_loss" in run("--kind", "val", "--out", str(tmp_path / "a.png"), f"x={tmp_path}").stderr
    assert "does not exist" in run("--out", str(tmp_path / "a.png"), f"x={tmp_path / 'nope'}").stderr
    assert "give LABEL=RUN" in run("--out", str(tmp_path / "a.png"), str(tmp_path)).stderr


def test_pairs_plot_each_variant_minus_its_reference(tmp_path):
    runs = {}
    curves = {"ref": {100: 4.0, 200: 3.5, 300: 3.2}, "var": {100: 4.1, 200: 3.4, 250: 3.3, 300: 3.2}}
    for name, losses in curves.items():
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 9.0, "val_loss": v}) + "\n" for s, v in losses.items()))
    out = tmp_path / "diff.png"
    done = run("--kind", "val", "--pairs", "--out", str(out), f"fp32={runs['ref']}", f"bf16={runs['var']}")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diff = json.loads(out.with_suffix(".json").read_text())["differences"]["bf16 - fp32"]
    assert diff["step"] == [100, 200, 300]  # the variant's step 250 has no reference
    assert [round(d, 9) for d in diff["difference"]] == [0.1, -0.1, 0.0]
    odd = run("--kind", "val", "--pairs", "--out", str(out), f"fp32={runs['ref']}")
    assert odd.returncode != 0 and "even number of runs" in odd.stderr
    again = run("--kind", "val", "--pairs", "--out", str(out), f"fp32={runs['ref']}", f"bf16={runs['var']}",
                f"fp32={runs['ref']}", f"other={runs['var']}")  # one reference for two variants
    assert again.returncode == 0, again.stderr
    assert set(json.loads(out.with_suffix(".json").read_text())["differences"]) == {"bf16 - fp32", "other - fp32"}
    clash = run("--kind", "val", "--out", str(out), f"x={runs['ref']}", f"x={runs['var']}")
    assert clash.returncode != 0 and "names two runs" in clash.stderr
