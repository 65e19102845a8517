"""Retrieval-probe (or validation-loss) curves of any training runs on one figure, with their data as JSON beside it.

The reproduction report draws the probes of its own full / NSA pairs; this compares arbitrary runs, e.g. NSA
variants against each other (each run's metrics.jsonl, logged with train.val_probes; `--kind val`: the
validation loss every run logs):

    python scripts/plot_probe_runs.py --kind passkey --out docs/results/x/probes.png \\
        "NSA shared K/V, seed 1=/tmp/runs/nsa_shared-s1" "NSA, seed 1=/tmp/runs/nsa-s1"

A run may also be a curve saved earlier: LABEL=FILE.json:KEY1/KEY2/... names a {"step": [...], "loss": [...]}
object inside that JSON (for runs whose folders are gone).

`--pairs` takes the runs two by two, a reference then a variant (e.g. the same seed with one option changed), and
plots each variant minus its reference at the steps both logged: differences that the absolute curves hide.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.compare import PROBE_ONSET, read_jsonl  # noqa: E402
from evaluation.report import write_json_atomic  # noqa: E402


def curve(source: str, kind: str) -> dict[str, list]:
    """{"step", "loss"} of the `kind` probe (or "val": the validation loss) from a run folder, or from
    FILE.json:KEY/KEY/... ."""
    path, _, keys = source.partition(".json:")
    if keys:
        obj = json.loads(Path(path + ".json").read_text())
        for key in keys.split("/"):
            obj = obj[key]
        return {"step": list(obj["step"]), "loss": list(obj["loss"])}
    metrics = Path(source) / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"error: {metrics} does not exist: pass a training run folder or FILE.json:KEY/...")
    key = "val_loss" if kind == "val" else f"val_probe_{kind}"
    rows = [r for r in read_jsonl(metrics) if key in r]
    if not rows:
        fix = "train with train.val_interval > 0" if kind == "val" else f"train with train.val_probes=[{kind}]"
        raise SystemExit(f"error: {metrics} logged no {key}: {fix}")
    return {"step": [r["step"] for r in rows], "loss": [r[key] for r in rows]}


def difference(reference: dict[str, list], variant: dict[str, list]) -> dict[str, list]:
    """{"step", "difference"}: variant minus reference at the steps both curves have."""
    ref = dict(zip(reference["step"], reference["loss"]))
    steps = [s for s in variant["step"] if s in ref]
    by_step = dict(zip(variant["step"], variant["loss"]))
    return {"step": steps, "difference": [by_step[s] - ref[s] for s in steps]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN", help="a label and a run folder (or FILE.json:KEY/...)")
    p.add_argument("--kind", default="passkey",
                   help="the probe (train.val_probes): passkey or needle; or val (the validation loss)")
    p.add_argument("--out", type=Path, required=True, help="the figure (.png); its data goes to the same name .json")
    p.add_argument("--pairs", action="store_true",
                   help="runs come as (reference, variant) pairs: plot each variant minus its reference")
    args = p.parse_args()
    if args.pairs and len(args.runs) % 2:
        raise SystemExit(f"error: --pairs takes an even number of runs (reference, variant, ...), got {len(args.runs)}")
    curves, sources, labels = {}, {}, []
    for spec in args.runs:
        label, sep, source = spec.partition("=")
        if not sep:
            raise SystemExit(f"error: {spec!r}: give LABEL=RUN")
        if sources.setdefault(label, source) != source:  # a reference may recur (--pairs), a label may not change
            raise SystemExit(f"error: label {label!r} names two runs: give each run its own label")
        curves[label] = curve(source, args.kind)
        labels.append(label)
    differences = {}
    if args.pairs:
        for ref, var in zip(labels[::2], labels[1::2]):
            d = difference(curves[ref], curves[var])
            if not d["step"]:
                raise SystemExit(f"error: {var!r} and {ref!r} logged no common step: pair runs of the same schedule")
            differences[f"{var} - {ref}"] = d
    shown = ({k: {"step": d["step"], "loss": d["difference"]} for k, d in differences.items()} if args.pairs
             else curves)
    fig, ax = plt.subplots(figsize=(7, 4))
    # more runs than the default cycle's 10 colours would repeat one: take tab20's then
    palette = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20").colors
    for i, (label, c) in enumerate(shown.items()):
        ax.plot(c["step"], c["loss"], marker="o", ms=3, label=label, color=palette[i % len(palette)])
    if args.pairs:
        ax.axhline(0.0, color="black", lw=0.8)
    elif args.kind != "val":
        ax.axhline(PROBE_ONSET, color="red", lw=0.8, ls=":", label="onset threshold")
    ax.set_xlabel("step")
    what = "validation loss" if args.kind == "val" else f"{args.kind} probe: answer loss"
    ax.set_ylabel(f"{what}: variant - reference (nats/token)" if args.pairs else f"{what} (nats/token)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    data = {"kind": args.kind, "onset_threshold": PROBE_ONSET, "runs": curves}
    if args.pairs:
        data["differences"] = differences
    write_json_atomic(args.out.with_suffix(".json"), data)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
