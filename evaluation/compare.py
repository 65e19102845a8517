"""Full attention vs NSA: read a reproduction's outputs, pair the two models sample by sample, draw the NSA paper's
figures, and write each figure's data beside it as JSON. `build()` also writes REPORT.md (evaluation/compare_report.py).

Input: the work folder of scripts/reproduce.py (WORK), nothing else:
    WORK/manifest.json                      scale, seeds, commands, card (optional)
    WORK/progress.json                      per step: command, status, seconds, note (optional)
    WORK/runs/<arm>-s<seed>/                train.py run dirs: config.yaml, metrics.jsonl
    WORK/eval/<arm>-s<seed>/                eval.py out dirs: results.json, <task>/grid.json, predictions.jsonl, ...
    WORK/bench/attention.json               scripts/bench_attention.py --out (optional)
    WORK/bench/decode.json                  scripts/bench_decode.py --out (optional)
with arm = full | nsa. Both models share seeds, data and evaluation samples (eval.py derives every sample from
the eval seed and its coordinates), so every comparison below is paired: the same documents, the same needles.

Output in REPORT_DIR (one JSON per figure or table, same stem):
    loss_curves.{png,json}        Figure 4: training / validation loss of both, and NSA - full
    retrieval_probes.{png,json}   answer loss of the retrieval probes over training, and each model's onset step
    niah_heatmaps.{png,json}      Figure 5: needle retrieval by depth x length, both side by side, and NSA - full
    passkey_heatmaps.{png,json}   the same for the pass key
    loss_by_position.{png,json}   held-out loss by token position (1x and 2x the training length)
    kernel_speedup.{png,json}     Figure 6: kernel speed-up over FlashAttention at 8k-64k (PNG only when measured)
    decode.{png,json}             Table 4: tokens loaded per decoding step, expected and measured speed-up
    longbench.json                Table 2 layout: LongBench(-style) scores
    ruler.json, mqar.json         RULER-style tasks, multi-query associative recall
    sparsity.json                 keys each query attended (NSA's real sparsity)
    summary.json                  the targets and the comparison with the paper
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.files import atomic_write  # noqa: E402
from evaluation.report import write_json_atomic  # noqa: E402
from evaluation.stats import mcnemar_exact, paired_bootstrap, t_interval, wilson  # noqa: E402

ARMS = ("full", "nsa")  # the baseline first: every difference is NSA - full
LABELS = {"full": "full attention", "nsa": "NSA"}
COLORS = {"full": "tab:blue", "nsa": "tab:orange"}
DPI = 90  # small PNGs: they are committed

# The paper's numbers (arXiv 2502.11089, as listed in /work/shared/NSA.md "The paper's results").
PAPER = {
    "longbench": {"full": {"hotpotqa": 0.350, "2wikimqa": 0.305, "passage_retrieval_en": 0.830, "lcc": 0.163,
                           "average": 0.437},
                  "nsa": {"hotpotqa": 0.437, "2wikimqa": 0.356, "passage_retrieval_en": 0.905, "lcc": 0.232,
                          "average": 0.469}},
    "general_average": {"full": 0.443, "nsa": 0.456},
    # Figure 6 (A100, Triton FlashAttention-2 vs NSA kernels): speed-up at 8k / 16k / 32k / 64k
    "kernel_forward": {8192: 2.1, 16384: 3.8, 32768: 6.3, 65536: 9.0},
    "kernel_backward": {8192: 1.1, 16384: 2.0, 32768: 3.4, 65536: 6.0},
    # Table 4: expected decoding speed-up from memory access (full: T tokens; NSA: (T-l)/d + n*l' + w)
    "decode_speedup": {8192: 4.0, 16384: 6.4, 32768: 9.1, 65536: 11.6},
    "decode_tokens": {8192: 2048, 16384: 2560, 32768: 3584, 65536: 5632},  # T/d + n*l' + w
    "sizes": {"compress_block": 32, "compress_stride": 16, "select_block": 64, "num_select": 16, "window": 512},
}
# LongBench task names as the paper abbreviates them, and the offline task standing in for each where one exists.
LONGBENCH_ABBREV = {"hotpotqa": "HPQ", "2wikimqa": "2Wiki", "passage_retrieval_en": "PassR-en", "lcc": "LCC",
                    "local_passage_retrieval": "local PassR", "local_passage_count": "local PassC",
                    "local_lcc": "local LCC"}
LOCAL_ANALOGUE = {"passage_retrieval_en": "local_passage_retrieval", "lcc": "local_lcc"}
BENCH_T = (8192, 16384, 32768, 65536)


# ---------------------------------------------------------------------------------------------------------------
# reading the outputs

def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file ([] when missing); a torn last line (a run killed mid-write) is ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _yaml(path: Path) -> dict[str, Any] | None:
    try:
        import yaml

        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, ImportError):
        return None


@dataclass
class Run:
    """One trained model (arm, seed): its training log and config, and its evaluation."""

    arm: str
    seed: int
    run_dir: Path
    eval_dir: Path
    config: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] | None = None

    def eval_rows(self, task: str) -> list[dict[str, Any]]:
        return read_jsonl(self.eval_dir / task / "predictions.jsonl")


@dataclass
class Outputs:
    work_dir: Path
    manifest: dict[str, Any]
    progress: dict[str, Any]
    seeds: list[int]
    runs: dict[tuple[str, int], Run]
    bench_attention: Any = None
    bench_decode: Any = None

    def run(self, arm: str, seed: int) -> Run:
        return self.runs[(arm, seed)]

    def trained_seeds(self) -> list[int]:
        return [s for s in self.seeds if all(self.run(a, s).metrics for a in ARMS)]

    def evaluated_seeds(self) -> list[int]:
        return [s for s in self.seeds if all(self.run(a, s).results for a in ARMS)]

    @property
    def train_length(self) -> int | None:
        for run in self.runs.values():
            if (run.config or {}).get("model", {}).get("max_seq_len"):
                return int(run.config["model"]["max_seq_len"])
            if (run.results or {}).get("model", {}).get("train_length"):
                return int(run.results["model"]["train_length"])
        return None

    def step_note(self, step_id: str) -> str:
        """Why a step has no output (its progress entry), for the report."""
        entry = self.progress.get(step_id)
        if not entry:
            return "not run"
        return entry.get("note") or entry.get("status", "not run")


def load_outputs(work_dir: Path) -> Outputs:
    """Everything a report is built from. Seeds: the manifest's, else those of the run folders found."""
    work_dir = Path(work_dir)
    manifest = read_json(work_dir / "manifest.json") or {}
    progress = read_json(work_dir / "progress.json") or {}
    seeds = manifest.get("seeds")
    if seeds is None:
        found = {int(m.group(1)) for p in (work_dir / "runs").glob("*-s*") if (m := re.search(r"-s(\d+)$", p.name))}
        seeds = sorted(found)
    runs = {}
    for arm in ARMS:
        for seed in seeds:
            name = f"{arm}-s{seed}"
            run = Run(arm, seed, work_dir / "runs" / name, work_dir / "eval" / name)
            run.config = _yaml(run.run_dir / "config.yaml")
            run.metrics = read_jsonl(run.run_dir / "metrics.jsonl")
            run.results = read_json(run.eval_dir / "results.json")
            runs[(arm, seed)] = run
    return Outputs(work_dir, manifest, progress, list(seeds), runs,
                   read_json(work_dir / "bench" / "attention.json"), read_json(work_dir / "bench" / "decode.json"))


# ---------------------------------------------------------------------------------------------------------------
# small helpers

def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _smooth(y: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or len(y) == 0:
        return y.tolist()
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(0, idx - window)
    return ((c[idx] - c[lo]) / (idx - lo)).tolist()


def _save_figure(fig, path: Path) -> Path:
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _accuracy_block(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Paired (full, nsa) 0/1 outcomes -> both accuracies with Wilson intervals, the paired difference with a
    bootstrap interval, and the exact McNemar p-value."""
    f = [float(a) for a, _ in pairs]
    n = [float(b) for _, b in pairs]
    out: dict[str, Any] = {"n": len(pairs)}
    for arm, xs in (("full", f), ("nsa", n)):
        out[arm] = _mean(xs)
        out[f"{arm}_ci"] = list(wilson(sum(xs), len(xs)))
    out["diff"] = paired_bootstrap(f, n)
    out["mcnemar"] = mcnemar_exact([x > 0.5 for x in f], [x > 0.5 for x in n])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Figure 4: loss curves

def loss_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    """Training loss (every step) and validation loss of both models per seed, NSA - full at matched steps, the
    final validation loss with its seed spread, and a paired interval over the last 10% of training steps (both
    models saw the same batches there, so this interval measures batch noise, not seed variance)."""
    seeds = out.trained_seeds()
    if not seeds:
        return {"status": "missing", "reason": "no seed has training metrics for both models"}
    per_seed: dict[str, Any] = {}
    for s in seeds:
        rows = {a: {r["step"]: r for r in out.run(a, s).metrics if "loss" in r} for a in ARMS}
        steps = sorted(set(rows["full"]) & set(rows["nsa"]))
        vsteps = [t for t in steps if rows["full"][t].get("val_loss") is not None
                  and rows["nsa"][t].get("val_loss") is not None]
        train = {a: [rows[a][t]["loss"] for t in steps] for a in ARMS}
        val = {a: [rows[a][t]["val_loss"] for t in vsteps] for a in ARMS}
        tail = max(1, len(steps) // 10)
        entry = {
            "step": steps,
            "tokens": [rows["full"][t].get("tokens") for t in steps],
            "train_loss": train,
            "val_step": vsteps,
            "val_loss": val,
            "last_step": {a: max(rows[a], default=0) for a in ARMS},
            "final_val": {a: (val[a][-1] if vsteps else None) for a in ARMS},
            # where the validation loss bottomed out: a minimum well before the end means the model overfit the
            # training text from there on, and the final difference then also measures how much each overfit
            "lowest_val": {a: ({"loss": min(val[a]), "step": vsteps[val[a].index(min(val[a]))]} if vsteps else None)
                           for a in ARMS},
            "train_tail_steps": [steps[-tail], steps[-1]] if steps else None,
            "train_tail_diff": paired_bootstrap(train["full"][-tail:], train["nsa"][-tail:], block=max(1, tail // 10)),
        }
        fv = entry["final_val"]
        entry["final_val_diff"] = fv["nsa"] - fv["full"] if fv["full"] is not None and fv["nsa"] is not None else None
        per_seed[str(s)] = entry
    diffs = [e["final_val_diff"] for e in per_seed.values() if e["final_val_diff"] is not None]
    data = {
        "status": "ok",
        "seeds": seeds,
        "per_seed": per_seed,
        "final_val": {a: t_interval([e["final_val"][a] for e in per_seed.values() if e["final_val"][a] is not None])
                      for a in ARMS},
        "final_val_diff": t_interval(diffs),
        # pooled over seeds: the last 10% of each seed's steps
        "train_tail_diff": paired_bootstrap(
            *([x for e in per_seed.values() for x in e["train_loss"][a][-max(1, len(e["step"]) // 10):]] for a in ARMS),
            block=max(1, min(len(e["step"]) for e in per_seed.values()) // 100)),
    }
    write_json_atomic(report_dir / "loss_curves.json", data)
    _plot_loss_curves(data, report_dir / "loss_curves.png")
    return data


def _plot_loss_curves(data: dict[str, Any], path: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for i, e in enumerate(data["per_seed"].values()):
        w = max(1, len(e["step"]) // 25)
        for arm in ARMS:
            label = f"{LABELS[arm]} (train, smoothed)" if i == 0 else None
            top.plot(e["step"], _smooth(e["train_loss"][arm], w), color=COLORS[arm], lw=1.2, alpha=0.8, label=label)
            if e["val_step"]:
                top.plot(e["val_step"], e["val_loss"][arm], "o--", color=COLORS[arm], ms=3, lw=1,
                         label=f"{LABELS[arm]} (validation)" if i == 0 else None)
        d = np.subtract(e["train_loss"]["nsa"], e["train_loss"]["full"])
        bottom.plot(e["step"], _smooth(d, w), color="tab:gray", lw=0.8, alpha=0.7,
                    label="train, smoothed" + (", each seed" if len(data["per_seed"]) > 1 else "") if i == 0 else None)
        if e["val_step"]:
            vd = np.subtract(e["val_loss"]["nsa"], e["val_loss"]["full"])
            bottom.plot(e["val_step"], vd, "o", color="black", ms=2.5,
                        label="validation" + (", each seed" if len(data["per_seed"]) > 1 else "") if i == 0 else None)
    if len(data["per_seed"]) > 1:  # the mean over seeds, at the steps every seed has
        runs = list(data["per_seed"].values())
        for key, steps_key, style, label in (("train_loss", "step", "-", "train, mean over seeds (smoothed)"),
                                             ("val_loss", "val_step", "o--", "validation, mean over seeds")):
            common = sorted(set.intersection(*(set(e[steps_key]) for e in runs)))
            if not common:
                continue
            diffs = [[e[key]["nsa"][e[steps_key].index(t)] - e[key]["full"][e[steps_key].index(t)] for t in common]
                     for e in runs]
            mean = np.mean(diffs, axis=0)
            y = _smooth(mean, max(1, len(common) // 25)) if key == "train_loss" else mean
            bottom.plot(common, y, style, color="black", lw=1.6, ms=4, label=label)
    bottom.axhline(0, color="red", lw=0.8)
    top.set_ylabel("loss (nats)")
    top.set_title("Figure 4 (small scale): loss of full attention and NSA, same data, tokens, optimizer and seed")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_ylabel("NSA - full (nats)")
    bottom.set_xlabel("optimizer step")
    bottom.legend(fontsize=7, ncol=2, loc="lower right")
    bottom.grid(alpha=0.3)
    _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# retrieval probes during training (train.val_probes, training/probes.py)

PROBE_ONSET = 0.5 * float(np.log(10))  # answer loss (nats per token) counted as retrieving: half of a digit guess


def probe_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    """The answer-token loss of each retrieval probe at every validation, both models, per seed, and the first
    step where it fell below PROBE_ONSET (retrieval onset); for NSA with train.val_probe_selection also the
    fraction of (layer, KV head) pairs that selected the needle's block ("selected", at "selected_step"). Only
    when the runs logged probes."""
    per_seed: dict[str, Any] = {}
    for s in out.trained_seeds():
        rows = {a: [r for r in out.run(a, s).metrics if any(k.startswith("val_probe_") for k in r)] for a in ARMS}
        kinds = sorted({k.removeprefix("val_probe_") for a in ARMS for r in rows[a] for k in r
                        if k.startswith("val_probe_") and not k.endswith("_selected")})
        entry = {}
        for kind in kinds:
            key = f"val_probe_{kind}"
            curves = {a: [(r["step"], r[key]) for r in rows[a] if r.get(key) is not None] for a in ARMS}
            entry[kind] = {a: {"step": [t for t, _ in c], "loss": [v for _, v in c],
                               "onset_step": next((t for t, v in c if v < PROBE_ONSET), None)}
                           for a, c in curves.items()}
            selected = [(r["step"], r[f"{key}_selected"]) for r in rows["nsa"] if r.get(f"{key}_selected") is not None]
            if selected:
                entry[kind]["nsa"].update(selected_step=[t for t, _ in selected], selected=[v for _, v in selected])
        if entry:
            per_seed[str(s)] = entry
    if not per_seed:
        return {"status": "missing", "reason": "the runs logged no retrieval probes (train.val_probes)"}
    data = {"status": "ok", "onset_threshold": PROBE_ONSET, "per_seed": per_seed}
    write_json_atomic(report_dir / "retrieval_probes.json", data)
    _plot_probes(data, report_dir / "retrieval_probes.png")
    return data


def _plot_probes(data: dict[str, Any], path: Path) -> None:
    kinds = sorted({k for e in data["per_seed"].values() for k in e})
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for i, (seed, entry) in enumerate(data["per_seed"].items()):
            for arm in ARMS:
                c = entry.get(kind, {}).get(arm)
                if c and c["step"]:
                    ax.plot(c["step"], c["loss"], ["-", "--", ":", "-."][i % 4], color=COLORS[arm], lw=1.2,
                            label=f"{LABELS[arm]}, seed {seed}")
        ax.axhline(np.log(10), color="gray", lw=0.8, ls=":", label="ln 10: a guessed digit")
        ax.axhline(data["onset_threshold"], color="red", lw=0.8, ls=":", label="onset threshold")
        ax.set_title(f"{kind}: answer loss during training")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("nats per answer token")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        sel = [(seed, e[kind]["nsa"]) for seed, e in data["per_seed"].items()
               if "selected" in e.get(kind, {}).get("nsa", {})]
        if sel:  # NSA's selection of the needle's block, on its own 0-1 axis
            ax2 = ax.twinx()
            for i, (seed, c) in enumerate(sel):
                ax2.plot(c["selected_step"], c["selected"], ["-", "--", ":", "-."][i % 4], color="black", lw=0.9,
                         alpha=0.6, label=f"NSA needle block selected, seed {seed}")
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("fraction of (layer, KV head) pairs")
            ax2.legend(fontsize=7, loc="lower right")
    _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# Figure 5: retrieval heatmaps (niah, passkey)

def grid_section(out: Outputs, task: str, report_dir: Path) -> dict[str, Any]:
    """Per cell (depth x length) and per length: both accuracies (Wilson 95% intervals) and the paired NSA - full
    difference (bootstrap 95% interval); within vs beyond the training length with McNemar's exact test."""
    seeds = [s for s in out.evaluated_seeds() if all(out.run(a, s).eval_rows(task) for a in ARMS)]
    if not seeds:
        return {"status": "missing", "reason": f"no seed has {task} predictions for both models"}
    pairs: dict[tuple[int, float], list[tuple[float, float]]] = {}
    seed_pairs: dict[int, list[tuple[int, float, float]]] = {}  # seed -> (length, full, nsa) per needle
    for s in seeds:
        hit = {a: {(r["length"], float(r["depth"]), r["sample"]): float(r["correct"])
                   for r in out.run(a, s).eval_rows(task)} for a in ARMS}
        for key in sorted(set(hit["full"]) & set(hit["nsa"])):
            pairs.setdefault(key[:2], []).append((hit["full"][key], hit["nsa"][key]))
            seed_pairs.setdefault(s, []).append((key[0], hit["full"][key], hit["nsa"][key]))
    lengths = sorted({L for L, _ in pairs})
    depths = sorted({d for _, d in pairs})
    train_length = out.train_length or max(lengths)
    # pooled tests treat every needle of every seed as independent; the seed-to-seed spread is only visible here
    per_seed_within = []
    for s, rows in seed_pairs.items():
        w = [(f, n) for L, f, n in rows if L <= train_length]
        if w:
            per_seed_within.append({"seed": s, "n": len(w), "full": sum(f for f, _ in w) / len(w),
                                    "nsa": sum(n for _, n in w) / len(w)})
    cells = []
    for d in depths:
        for L in lengths:
            if (L, d) in pairs:
                block = _accuracy_block(pairs[(L, d)])
                hi = block["diff"]["hi"]
                cells.append({"length": L, "depth": d, **block, "full_beats_nsa": hi is not None and hi < 0})
    by_length = {str(L): _accuracy_block([p for (L2, _), ps in pairs.items() if L2 == L for p in ps]) for L in lengths}
    within = [p for (L, _), ps in pairs.items() if L <= train_length for p in ps]
    beyond = [p for (L, _), ps in pairs.items() if L > train_length for p in ps]
    within_cells = [c for c in cells if c["length"] <= train_length]
    data = {
        "status": "ok",
        "task": task,
        "seeds": seeds,
        "train_length": train_length,
        "lengths": lengths,
        "depths": depths,
        "grid": {a: [[next((c[a] for c in cells if c["length"] == L and c["depth"] == d), None) for L in lengths]
                     for d in depths] for a in ARMS},
        "cells": cells,
        "by_length": by_length,
        "within": _accuracy_block(within) if within else None,
        "beyond": _accuracy_block(beyond) if beyond else None,
        "per_seed_within": per_seed_within,
        "min_nsa_cell_within": min((c["nsa"] for c in within_cells), default=None),
        "cells_full_beats_nsa": [[c["length"], c["depth"]] for c in cells if c["full_beats_nsa"]],
        "haystack": (out.run("nsa", seeds[0]).results.get(task) or {}).get("haystack"),
        "nsa_selection": _needle_selection({s: out.run("nsa", s).eval_rows(task) for s in seeds}, train_length),
    }
    write_json_atomic(report_dir / f"{task}_heatmaps.json", data)
    _plot_heatmaps(data, report_dir / f"{task}_heatmaps.png")
    return data


def _needle_selection(rows_by_seed: dict[int, Sequence[dict[str, Any]]], train_length: int) -> dict[str, Any] | None:
    """NSA's needles outside its window (evaluation/selection.py; the seeds whose predictions have it, pooled,
    listed in "seeds"), per length ("by_length") and within the training length ("within"): how many, the mean
    fraction of (layer, KV head) pairs that selected the needle's block, the accuracy where most pairs did
    (>= 0.5) and where they did not, and the mean gates of the selected and window branches. None when no
    prediction has it (made before the diagnostic existed)."""
    seeds = [s for s, rows in rows_by_seed.items() if any("needle_selected" in r for r in rows)]
    far = [r for s in seeds for r in rows_by_seed[s] if "needle_selected" in r and not r["needle_in_window"]]
    if not far:
        return None

    def stats(at: list[dict[str, Any]]) -> dict[str, Any]:
        found = [float(r["correct"]) for r in at if r["needle_selected"] >= 0.5]
        missed = [float(r["correct"]) for r in at if r["needle_selected"] < 0.5]
        return {"n": len(at), "selected": _mean([r["needle_selected"] for r in at]),
                "n_found": len(found), "accuracy_found": _mean(found),
                "n_missed": len(missed), "accuracy_missed": _mean(missed),
                "gate_slc": _mean([r["gate_slc"] for r in at]), "gate_win": _mean([r["gate_win"] for r in at])}
    within = [r for r in far if r["length"] <= train_length]
    lengths = sorted({r["length"] for r in far})
    return {"seeds": seeds, "by_length": {str(L): stats([r for r in far if r["length"] == L]) for L in lengths},
            "within": stats(within) if within else None}


def _heatmap(ax, grid: np.ndarray, data: dict[str, Any], title: str, cmap: str, vmin: float, vmax: float):
    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="upper")
    lengths, depths = data["lengths"], data["depths"]
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_title(title, fontsize=10)
    inside = sum(1 for L in lengths if L <= data["train_length"])
    if 0 < inside < len(lengths):  # the training length: extrapolation to the right of this line
        ax.axvline(inside - 0.5, color="black", ls="--", lw=1.2)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6)
    return im


def _plot_heatmaps(data: dict[str, Any], path: Path) -> None:
    grids = {a: np.array([[np.nan if v is None else v for v in row] for row in data["grid"][a]], float) for a in ARMS}
    diff = grids["nsa"] - grids["full"]
    w = 1.4 + 0.55 * len(data["lengths"])
    fig, axes = plt.subplots(1, 3, figsize=(3 * w + 1.5, 2.0 + 0.35 * len(data["depths"])), layout="constrained")
    task = data["task"]
    for ax, arm in zip(axes, ARMS):
        im = _heatmap(ax, grids[arm], data, f"{task}: {LABELS[arm]}", "RdYlGn", 0.0, 1.0)
    axes[0].set_ylabel("needle depth (%)")
    fig.colorbar(im, ax=axes[1], label="accuracy")
    imd = _heatmap(axes[2], diff, data, f"{task}: NSA - full (blue: NSA ahead)", "RdBu", -1.0, 1.0)
    for c in data["cells"]:
        if c["full_beats_nsa"]:  # full ahead beyond the paired 95% interval
            j, i = data["lengths"].index(c["length"]), data["depths"].index(c["depth"])
            axes[2].add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=2))
    fig.colorbar(imd, ax=axes[2], label="accuracy difference")
    fig.suptitle(f"{task} (Figure 5 layout): accuracy by depth x length, dashed line = training length "
                 f"{data['train_length']}", fontsize=10)
    _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# loss by position

def position_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    """Held-out loss per token position (eval.py ppl_position: the same windows for both models), averaged over
    seeds, within and beyond the training length, with the paired per-position difference."""
    seeds = [s for s in out.evaluated_seeds()
             if all(read_json(out.run(a, s).eval_dir / "ppl_position" / "loss_by_position.json") for a in ARMS)]
    if not seeds:
        return {"status": "missing", "reason": "no seed has ppl_position results for both models"}
    curves = {a: [read_json(out.run(a, s).eval_dir / "ppl_position" / "loss_by_position.json") for s in seeds]
              for a in ARMS}
    n = min(len(c["loss_by_position"]) for a in ARMS for c in curves[a])
    per_pos = {a: np.mean([c["loss_by_position"][:n] for c in curves[a]], axis=0) for a in ARMS}
    first = curves["full"][0]
    train_length = int(first.get("train_length") or out.train_length or n)
    edges = [e for e in first["bucket_edges"] if e <= n]
    regions = {"within": slice(0, min(train_length, n)), "beyond": slice(min(train_length, n), n)}
    data: dict[str, Any] = {
        "status": "ok",
        "seeds": seeds,
        "length": n,
        "train_length": train_length,
        "windows": first.get("windows"),
        "loss_by_position": {a: per_pos[a].tolist() for a in ARMS},
        "bucket_edges": edges,
        "bucket_loss": {a: [float(per_pos[a][x:y].mean()) for x, y in zip(edges, edges[1:])] for a in ARMS},
    }
    for name, sl in regions.items():
        if sl.stop > sl.start:
            data[name] = {**{a: float(per_pos[a][sl].mean()) for a in ARMS},
                          "diff": paired_bootstrap(per_pos["full"][sl], per_pos["nsa"][sl], block=max(1, n // 32))}
        else:
            data[name] = None
    write_json_atomic(report_dir / "loss_by_position.json", data)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    pos = np.arange(1, n + 1)
    w = max(1, n // 32)
    for a in ARMS:
        top.plot(pos, _smooth(per_pos[a], w), color=COLORS[a], lw=1.3, label=f"{LABELS[a]} (moving mean, {w} tokens)")
        top.stairs(data["bucket_loss"][a], np.asarray(edges) + 1, color=COLORS[a], lw=2, alpha=0.5, baseline=None)
    bottom.plot(pos, _smooth(per_pos["nsa"] - per_pos["full"], w), color="tab:gray", lw=1.3)
    bottom.axhline(0, color="red", lw=0.8)
    for ax in (top, bottom):
        if train_length < n:
            ax.axvline(train_length, color="black", ls="--", lw=1)
        ax.grid(alpha=0.3)
    top.set_ylabel("held-out loss (nats)")
    top.set_title(f"Loss by position (dashed: training length {train_length})")
    top.legend(fontsize=8)
    bottom.set_ylabel("NSA - full")
    bottom.set_xlabel("token position")
    _save_figure(fig, report_dir / "loss_by_position.png")
    return data


# ---------------------------------------------------------------------------------------------------------------
# RULER, MQAR

def ruler_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    """RULER-style scores (0-100, string_match_all) per kind, paired sample by sample (same prompts, same order)."""
    from evaluation.metrics import string_match_all

    seeds = [s for s in out.evaluated_seeds() if all(out.run(a, s).eval_rows("ruler") for a in ARMS)]
    if not seeds:
        return {"status": "missing", "reason": "no seed has ruler predictions for both models"}
    scores: dict[str, list[tuple[float, float]]] = {}
    by_length: dict[str, list[tuple[float, float]]] = {}
    for s in seeds:
        rows = {a: out.run(a, s).eval_rows("ruler") for a in ARMS}
        groups: dict[str, dict[tuple, list[float]]] = {a: {} for a in ARMS}
        for a in ARMS:
            for r in rows[a]:
                groups[a].setdefault((r["task"], r["length"]), []).append(string_match_all([r["pred"]], [r["outputs"]]))
        for key in sorted(set(groups["full"]) & set(groups["nsa"])):
            pairs = list(zip(groups["full"][key], groups["nsa"][key]))
            scores.setdefault(key[0], []).extend(pairs)
            by_length.setdefault(f"{key[0]}@{key[1]}", []).extend(pairs)

    def block(pairs):
        return {"n": len(pairs), "full": _mean([p[0] for p in pairs]), "nsa": _mean([p[1] for p in pairs]),
                "diff": paired_bootstrap([p[0] for p in pairs], [p[1] for p in pairs])}

    kinds = {k: block(v) for k, v in scores.items()}
    data = {
        "status": "ok",
        "seeds": seeds,
        "scale": "0-100 (RULER string_match_all)",
        "kinds": kinds,
        "by_length": {k: block(v) for k, v in by_length.items()},
        "average": {a: _mean([kinds[k][a] for k in kinds]) for a in ARMS},
    }
    write_json_atomic(report_dir / "ruler.json", data)
    return data


def mqar_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    """Values recalled (teacher-forced greedy), per length, paired value by value (same documents)."""
    seeds = [s for s in out.evaluated_seeds() if all(out.run(a, s).eval_rows("mqar") for a in ARMS)]
    if not seeds:
        return {"status": "missing", "reason": "no seed has mqar predictions for both models"}
    pairs: dict[int, list[tuple[float, float]]] = {}
    for s in seeds:
        rec = {a: {(r["length"], r["seed"]): r["recalled"] for r in out.run(a, s).eval_rows("mqar")} for a in ARMS}
        for key in sorted(set(rec["full"]) & set(rec["nsa"])):
            pairs.setdefault(key[0], []).extend(zip(map(float, rec["full"][key]), map(float, rec["nsa"][key])))
    train_length = out.train_length or max(pairs)
    data = {
        "status": "ok",
        "seeds": seeds,
        "train_length": train_length,
        "by_length": {str(L): _accuracy_block(p) for L, p in sorted(pairs.items())},
        "all": _accuracy_block([p for ps in pairs.values() for p in ps]),
    }
    write_json_atomic(report_dir / "mqar.json", data)
    return data


# ---------------------------------------------------------------------------------------------------------------
# Table 2: LongBench(-style)

def _longbench_tasks(results: dict[str, Any]) -> list[str]:
    lb = results.get("longbench") or {}
    return [k for k, v in lb.items() if "/" not in k and k not in ("average", "local_average", "error")
            and isinstance(v, int | float)]


def longbench_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    """Per task: both scores on LongBench's scale / 100 (the paper's Table 2 scale), the paired per-sample
    difference (LongBench's own per-sample metric), and the paper's numbers where NSA.md lists them."""
    from evaluation.longbench import base_task
    from evaluation.metrics import sample_score

    seeds = [s for s in out.evaluated_seeds() if all(_longbench_tasks(out.run(a, s).results) for a in ARMS)]
    if not seeds:
        return {"status": "missing", "reason": "no seed has LongBench results for both models"}
    tasks = sorted(set.intersection(*(set(_longbench_tasks(out.run(a, s).results)) for a in ARMS for s in seeds)),
                   key=lambda t: (t.startswith("local_"), t))
    rows: dict[str, Any] = {}
    for task in tasks:
        pairs = []
        for s in seeds:
            per = {}
            for a in ARMS:
                preds = read_jsonl(out.run(a, s).eval_dir / "longbench" / "pred" / f"{task}.jsonl")
                classes = preds[-1].get("all_classes") if preds else None  # LongBench: the file's last line's
                per[a] = {r.get("_id", i): sample_score(base_task(task), str(r["pred"]), r["answers"], classes)
                          for i, r in enumerate(preds)}
            pairs += [(per["full"][k], per["nsa"][k]) for k in per["full"] if k in per["nsa"]]
        rows[task] = {
            "name": LONGBENCH_ABBREV.get(task, task),
            "local": task.startswith("local_"),
            **{a: _mean([out.run(a, s).results["longbench"][task] / 100 for s in seeds]) for a in ARMS},
            "n": len(pairs),
            "diff": paired_bootstrap([p[0] for p in pairs], [p[1] for p in pairs]),
            "paper": {a: PAPER["longbench"][a].get(task) for a in ARMS},
        }
    real = [t for t in tasks if not rows[t]["local"]]
    local = [t for t in tasks if rows[t]["local"]]
    data = {
        "status": "ok",
        "seeds": seeds,
        "scale": "LongBench score / 100 (0-1, as the paper's Table 2)",
        "tasks": rows,
        "average": {a: _mean([rows[t][a] for t in real]) for a in ARMS} if real else None,
        "local_average": {a: _mean([rows[t][a] for t in local]) for a in ARMS} if local else None,
        "paper_average": {a: PAPER["longbench"][a]["average"] for a in ARMS},
        "real_longbench": bool(real),
    }
    write_json_atomic(report_dir / "longbench.json", data)
    return data


# ---------------------------------------------------------------------------------------------------------------
# sparsity

def sparsity_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    """Keys a query attends to (each attention module's own count, eval.py `sparsity`), per branch and length,
    and the fraction of full causal attention's keys; plus what the training log recorded."""
    data: dict[str, Any] = {"status": "missing", "arms": {}}
    for arm in ARMS:
        runs = [out.run(arm, s) for s in out.seeds]
        res = next((r.results for r in runs if r.results and r.results.get("sparsity")), None)
        first = next((r.metrics[0] for r in runs if r.metrics), {})
        cfg = next((r.config for r in runs if r.config), None)
        entry = {"training_log": {k[len("attn_keys_"):]: v for k, v in first.items() if k.startswith("attn_keys_")},
                 "attention_config": (cfg or {}).get("attention") or ((res or {}).get("model") or {}).get(
                     "attention_config")}
        if res:
            entry["by_length"] = {k: v for k, v in res["sparsity"].items() if isinstance(v, dict)}
            data["status"] = "ok"
        data["arms"][arm] = entry
    nsa = data["arms"]["nsa"].get("by_length") or {}
    tl = out.train_length
    data["train_length"] = tl
    data["nsa_fraction_at_train_length"] = (nsa.get(str(tl)) or {}).get("fraction") if tl else None
    write_json_atomic(report_dir / "sparsity.json", data)
    return data


# ---------------------------------------------------------------------------------------------------------------
# Figure 6: kernel speed-up

def _bench_rows(bench: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """scripts/bench_attention.py's {section: {T: {"nsa": {...}, "flash": {...}, "cudnn": {...}}}} -> speed-ups
    over each SDPA backend: forward, backward (fwd+bwd - fwd) and forward+backward."""
    rows = []
    for T, r in sorted(((int(k), v) for k, v in (bench.get(section) or {}).items() if str(k).isdigit())):
        nsa = r.get("nsa") or {}
        row: dict[str, Any] = {"T": T, "nsa_fwd_ms": nsa.get("total_fwd"), "nsa_fwdbwd_ms": nsa.get("total_fwdbwd")}
        if "error" in nsa:
            row["nsa_error"] = nsa["error"]
        for base in ("flash", "cudnn"):
            b = r.get(base) or {}
            row[f"{base}_fwd_ms"], row[f"{base}_fwdbwd_ms"] = b.get("fwd"), b.get("fwdbwd")
            ok = all(isinstance(x, int | float) and x > 0 for x in (b.get("fwd"), b.get("fwdbwd"),
                                                                     nsa.get("total_fwd"), nsa.get("total_fwdbwd")))
            nsa_bwd = nsa.get("total_fwdbwd", 0) - nsa.get("total_fwd", 0) if ok else 0
            row[f"vs_{base}"] = {
                "forward": b["fwd"] / nsa["total_fwd"] if ok else None,
                "backward": (b["fwdbwd"] - b["fwd"]) / nsa_bwd if ok and nsa_bwd > 0 else None,
                "forward_backward": b["fwdbwd"] / nsa["total_fwdbwd"] if ok else None,
            }
        row["paper"] = {"forward": PAPER["kernel_forward"].get(T), "backward": PAPER["kernel_backward"].get(T)}
        rows.append(row)
    return rows


def kernel_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    b = out.bench_attention
    if not isinstance(b, dict) or not (b.get("main") or b.get("paper")):
        data = {"status": "not run", "reason": out.step_note("bench_attention"), "paper": {
            "forward": PAPER["kernel_forward"], "backward": PAPER["kernel_backward"]}}
        write_json_atomic(report_dir / "kernel_speedup.json", data)
        return data
    data = {"status": "ok", "device": b.get("device"), "torch": b.get("torch"), "triton": b.get("triton"),
            "command": b.get("command"), "nsa_sizes": b.get("nsa_sizes"),
            "baseline": "SDPA flash backend (FlashAttention-2); the paper: Triton FlashAttention-2 on an A100",
            "main": _bench_rows(b, "main"), "paper_shape": _bench_rows(b, "paper")}
    write_json_atomic(report_dir / "kernel_speedup.json", data)
    rows = [r for r in data["main"] if r["vs_flash"]["forward"] is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        x = np.arange(len(rows))
        bars = [("ours forward", [r["vs_flash"]["forward"] for r in rows], "tab:orange", None),
                ("paper forward", [r["paper"]["forward"] or 0 for r in rows], "tab:orange", "//"),
                ("ours backward", [r["vs_flash"]["backward"] or 0 for r in rows], "tab:green", None),
                ("paper backward", [r["paper"]["backward"] or 0 for r in rows], "tab:green", "//")]
        for i, (label, ys, color, hatch) in enumerate(bars):
            bx = ax.bar(x + (i - 1.5) * 0.2, ys, 0.2, label=label, color=color, alpha=0.5 if hatch else 0.9,
                        hatch=hatch, edgecolor="black", lw=0.5)
            ax.bar_label(bx, fmt="%.1f", fontsize=7)
        ax.axhline(1, color="red", lw=0.8)
        ax.set_xticks(x, [f"{r['T'] // 1024}k" for r in rows])
        ax.set_xlabel("sequence length")
        ax.set_ylabel("speed-up over FlashAttention-2 (x)")
        ax.set_title(f"Figure 6: NSA kernels vs FlashAttention-2 ({data['device']}; paper: A100)", fontsize=10)
        ax.legend(fontsize=8)
        _save_figure(fig, report_dir / "kernel_speedup.png")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Table 4: decoding

def decode_tokens(T: int, compress_block: int, compress_stride: int, select_block: int, num_select: int,
                  window: int) -> int:
    """Keys NSA reads to decode the token after a context of T: compressed tokens + selected blocks + window
    (NSA.md, Table 4; the +1 counts the compressed token of position 0, which the paper's formula omits)."""
    n_cmp = max(0, (T - compress_block) // compress_stride + 1)
    return n_cmp + min(num_select * select_block, T) + min(window, T)


def _decode_measured(bench: Any) -> list[dict[str, Any]] | None:
    """scripts/bench_decode.py's `attn` section ({"<shape>-B<B>-T<k>k": {"nsa": {"us"}, "full": {"us", "best"},
    "speedup", "table4_speedup", ...}}) -> rows {shape, B, T, nsa_us, full_us, full_best, speedup, table4_speedup};
    None when there is no such section."""
    if not isinstance(bench, dict) or not isinstance(bench.get("attn"), dict):
        return None
    rows = []
    for key, r in bench["attn"].items():
        m = re.fullmatch(r"(\w+)-B(\d+)-T(\d+)k", key)
        if not m or not isinstance(r, dict) or "us" not in (r.get("nsa") or {}):
            continue
        rows.append({"shape": m.group(1), "B": int(m.group(2)), "T": int(m.group(3)) * 1024,
                     "nsa_us": r["nsa"]["us"], "full_us": (r.get("full") or {}).get("us"),
                     "full_best": (r.get("full") or {}).get("best"), "speedup": r.get("speedup"),
                     "table4_speedup": r.get("table4_speedup"), "nsa_bw_fraction": r.get("nsa_bw_fraction")})
    return rows or None


def _decode_generate(bench: Any) -> list[dict[str, Any]] | None:
    """bench_decode.py's `generate` section: end-to-end decode tokens/s of full and NSA per (B, T)."""
    if not isinstance(bench, dict) or not isinstance(bench.get("generate"), dict):
        return None
    by_point: dict[tuple[int, int], dict[str, Any]] = {}
    for key, r in bench["generate"].items():
        m = re.fullmatch(r"(full|nsa)(-graph)?-B(\d+)-T(\d+)k", key)  # "-graph": generate(cuda_graph=True)
        if m and isinstance(r, dict) and "decode_tok_s" in r:
            point = by_point.setdefault((int(m.group(3)), int(m.group(4)) * 1024), {})
            point[m.group(1) + ("_graph" if m.group(2) else "")] = r["decode_tok_s"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None
    rows = [{"B": B, "T": T, "full_tok_s": v.get("full"), "nsa_tok_s": v.get("nsa"),
             "speedup": ratio(v.get("nsa"), v.get("full")), "full_graph_tok_s": v.get("full_graph"),
             "nsa_graph_tok_s": v.get("nsa_graph"), "graph_speedup": ratio(v.get("nsa_graph"), v.get("full_graph"))}
            for (B, T), v in sorted(by_point.items())]
    return rows or None


def headline_decode(measured: list[dict[str, Any]] | None) -> dict[int, float]:
    """Measured decoding-step speed-up by T for the paper-like shape at batch 1 (else the first shape / batch)."""
    if not measured:
        return {}
    pick = [r for r in measured if r["shape"] == "main" and r["B"] == 1] or \
        [r for r in measured if (r["shape"], r["B"]) == (measured[0]["shape"], measured[0]["B"])]
    return {r["T"]: r["speedup"] for r in pick if r["speedup"]}


def decode_section(out: Outputs, report_dir: Path) -> dict[str, Any]:
    """Tokens loaded per decoding step (full: T; NSA: compressed + selected + window) with the paper's sizes at
    8k-64k and with the trained NSA's sizes at 1x / 2x its training length; measured decoding if benchmarked."""
    s = PAPER["sizes"]
    paper_rows = [{"T": T, "full": T, "nsa": decode_tokens(T, **s), "expected_speedup": T / decode_tokens(T, **s),
                   "paper_tokens": PAPER["decode_tokens"][T], "paper_speedup": PAPER["decode_speedup"][T]}
                  for T in BENCH_T]
    cfg = next((r.config.get("attention") for r in (out.run("nsa", x) for x in out.seeds) if r.config), None)
    trained = []
    if cfg and out.train_length:
        sizes = {k: cfg[k] for k in ("compress_block", "compress_stride", "select_block", "num_select", "window")}
        for T in (out.train_length, 2 * out.train_length):
            trained.append({"T": T, "full": T, "nsa": decode_tokens(T, **sizes),
                            "expected_speedup": T / decode_tokens(T, **sizes)})
    throughput = {a: _mean([(out.run(a, x).results or {}).get("throughput", {}).get("decode_tok_s")
                            for x in out.seeds]) for a in ARMS}
    b = out.bench_decode
    measured = _decode_measured(b)
    data = {
        "status": "ok",
        "paper_sizes": paper_rows,
        "trained_sizes": trained,
        "eval_decode_tok_s": throughput,
        "device": b.get("device") if isinstance(b, dict) else None,
        "command": b.get("command") if isinstance(b, dict) else None,
        "shapes": b.get("shapes") if isinstance(b, dict) else None,
        "measured": measured,
        "headline": headline_decode(measured),
        "generate": _decode_generate(b),
        "measured_note": out.step_note("bench_decode") if b is None else (
            None if measured else "the decode benchmark has no `attn` results"),
    }
    write_json_atomic(report_dir / "decode.json", data)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(paper_rows))
    series = [("expected (this repo's count)", [r["expected_speedup"] for r in paper_rows], None),
              ("paper, Table 4", [r["paper_speedup"] for r in paper_rows], "//")]
    if data["headline"]:
        series.append((f"measured ({data['device']}, decoding step)",
                       [data["headline"].get(r["T"]) or 0 for r in paper_rows], "xx"))
    width = 0.8 / len(series)
    for i, (label, ys, hatch) in enumerate(series):
        bx = ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=label, hatch=hatch,
                    color="tab:purple", alpha=0.9 - 0.3 * i, edgecolor="black", lw=0.5)
        ax.bar_label(bx, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [f"{r['T'] // 1024}k" for r in paper_rows])
    ax.set_xlabel("context length")
    ax.set_ylabel("decoding speed-up (x)")
    ax.set_title("Table 4: memory access per decoding step, full / NSA (paper sizes)", fontsize=10)
    ax.legend(fontsize=8)
    _save_figure(fig, report_dir / "decode.png")
    return data


# ---------------------------------------------------------------------------------------------------------------

def build(work_dir: Path, report_dir: Path) -> dict[str, Any]:
    """Every figure + its JSON, summary.json and REPORT.md in report_dir, from work_dir's outputs only."""
    from evaluation.compare_report import paper_rows, targets, write_report

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    out = load_outputs(work_dir)
    sections = {
        "loss": loss_section(out, report_dir),
        "probes": probe_section(out, report_dir),
        "niah": grid_section(out, "niah", report_dir),
        "passkey": grid_section(out, "passkey", report_dir),
        "position": position_section(out, report_dir),
        "ruler": ruler_section(out, report_dir),
        "mqar": mqar_section(out, report_dir),
        "longbench": longbench_section(out, report_dir),
        "sparsity": sparsity_section(out, report_dir),
        "kernel": kernel_section(out, report_dir),
        "decode": decode_section(out, report_dir),
    }
    summary = {"scale": out.manifest.get("scale"), "targets": targets(sections), "paper": paper_rows(sections)}
    write_json_atomic(report_dir / "summary.json", summary)
    write_report(out, sections, summary, report_dir)
    return {"sections": sections, **summary}

