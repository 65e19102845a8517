"""Pair one NSA ablation with the reproduction's full-attention runs of the same seeds, as a work folder that
`scripts/reproduce.py --report-only` turns into a report (docs/results/gpu-small-ablations/).

scripts/gpu_nsa_ablation.sh trains and evaluates only the NSA arm of a variant (WORK/<variant>/runs/nsa-s<seed>,
eval/nsa-s<seed>, commands_nsa-s<seed>.txt); the baseline is a reproduction work folder holding full-s<seed>
(and the benchmark outputs). Checkpoints are not copied.

    python scripts/assemble_ablation.py --baseline /tmp/repro3 --variant /tmp/abl/shared_kv --seeds 3 \\
        --out /tmp/abl_shared_kv --invocation 'VARIANTS="shared_kv:attention.shared_kv=true" SEEDS=3 bash \\
        scripts/gpu_nsa_ablation.sh' --device "4 x NVIDIA H200" --commit 77d998c
    python scripts/reproduce.py --scale gpu-small --seeds 3 --report-only --work-dir /tmp/abl_shared_kv \\
        --report-dir docs/results/gpu-small-ablations/shared_kv
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.compare import read_json  # noqa: E402
from evaluation.report import write_json_atomic  # noqa: E402


def copy_arm(src: Path, dst: Path, arm: str, seed: int) -> None:
    """runs/<arm>-s<seed> (without checkpoints), eval/<arm>-s<seed> and its logs, from work folder src to dst."""
    name = f"{arm}-s{seed}"
    for sub in ("runs", "eval"):
        if not (src / sub / name).is_dir():
            raise SystemExit(f"error: {src / sub / name} is missing: {src} holds no {sub[:-1]} of {name}")
        shutil.copytree(src / sub / name, dst / sub / name, ignore=shutil.ignore_patterns("checkpoints", "*.pt"))
    for log in (src / "logs").glob(f"*{name}.log"):
        shutil.copy2(log, dst / "logs" / log.name)


def invocation_seeds(command: str) -> list[int]:
    """The seeds a reproduce.py command names with --seeds ([] when it names none: the preset's)."""
    words = shlex.split(command)
    if "--seeds" not in words:
        return []
    rest = words[words.index("--seeds") + 1:]
    return [int(w) for w in rest[: next((i for i, w in enumerate(rest) if not w.isdigit()), len(rest))]]


def assemble(baseline: Path, variant: Path, seeds: list[int], out: Path, invocation: dict) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty: pass a new --out folder")
    manifest = read_json(baseline / "manifest.json")
    progress = read_json(baseline / "progress.json")
    if manifest is None or progress is None:
        raise SystemExit(f"error: {baseline} has no manifest.json / progress.json: pass a reproduction work folder")
    (out / "logs").mkdir(parents=True)
    if (baseline / "bench").is_dir():
        shutil.copytree(baseline / "bench", out / "bench")
    entries = {k: v for k, v in progress.items() if k.startswith("bench_")}
    for seed in seeds:
        copy_arm(baseline, out, "full", seed)
        copy_arm(variant, out, "nsa", seed)
        entries.update({k: progress[k] for k in (f"train/full-s{seed}", f"eval/full-s{seed}") if k in progress})
        commands = variant / f"commands_nsa-s{seed}.txt"
        train_cmd, eval_cmd = (commands.read_text().splitlines() + ["", ""])[:2] if commands.is_file() else ("", "")
        note = f"NSA ablation {variant.name}: scripts/gpu_nsa_ablation.sh (scripts/assemble_ablation.py)"
        for kind, cmd in (("train", train_cmd), ("eval", eval_cmd)):
            entries[f"{kind}/nsa-s{seed}"] = dict(kind=kind, status="done", command=cmd or "(not recorded)",
                                                  seconds=None, note=note, log=None, updated=invocation["started"])
    ran = [i for i in manifest.get("invocations", []) if set(invocation_seeds(i["command"]) or seeds) & set(seeds)]
    manifest.update(seeds=seeds, work_dir=str(out), report_dir=None, git_commit=invocation["git_commit"],
                    invocations=[*ran, invocation], ablation=variant.name)
    write_json_atomic(out / "progress.json", entries)
    write_json_atomic(out / "manifest.json", manifest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, required=True, help="reproduction work folder with the full-attention runs")
    p.add_argument("--variant", type=Path, required=True, help="gpu_nsa_ablation.sh's folder of one variant")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True, help="the work folder to create")
    p.add_argument("--invocation", required=True, help="the command that trained the variant (for the report)")
    p.add_argument("--device", default="?", help="the card(s) it ran on")
    p.add_argument("--commit", default="?", help="the git commit it ran at")
    p.add_argument("--started", default=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    p.add_argument("--seconds", type=float, help="how long the call took")
    args = p.parse_args()
    assemble(args.baseline, args.variant, args.seeds, args.out,
             {"command": args.invocation, "started": args.started, "seconds": args.seconds, "result": "complete",
              "git_commit": args.commit, "device": args.device})
    print(f"assembled {args.out}: report it with scripts/reproduce.py --report-only --work-dir {args.out}")


if __name__ == "__main__":
    main()
