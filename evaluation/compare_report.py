"""REPORT.md of a full-vs-NSA reproduction, and the verdicts in it: the issue's targets and each of the paper's
results next to ours. Everything comes from evaluation/compare.py's section data (themselves read from the
reproduction's outputs); a hand-written NOTES.md in the report folder, if any, is included as the discussion.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common.files import write_text_atomic
from evaluation.compare import ARMS, BENCH_T, LABELS, LOCAL_ANALOGUE, LONGBENCH_ABBREV, PAPER, Outputs

CPU_BANNER = ("> **CPU pipeline check, not a reproduction.** This run proves that the whole pipeline works end to "
              "end (train both models, evaluate them, benchmark, build every figure and this report) at a size that "
              "finishes in minutes on 2 CPU cores. A model of about a million parameters trained for a few hundred "
              "steps at 256 tokens cannot show the paper's effects; read the numbers as a smoke test of the code.")


def fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    """A number for the report ('-' for None or NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool | int):
        return str(x)
    if isinstance(x, float):
        return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return str(x)


def ci(lo: float | None, hi: float | None, digits: int = 3, signed: bool = False) -> str:
    return "-" if lo is None or hi is None else f"[{fmt(lo, digits, signed)}, {fmt(hi, digits, signed)}]"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# targets and the comparison with the paper

VAL_LOSS_MARGIN = 0.01  # nats: NSA's validation loss may exceed full attention's by at most this
NIAH_MIN = 0.95  # NSA's accuracy in every needle cell within the training length


def _verdict(diff: float | None, lo: float | None, hi: float | None, higher_is_better: bool) -> str:
    """How NSA - full compares with the paper's claim that NSA is better: 'reproduced' (NSA better and the
    interval excludes 0), 'not reproduced' (NSA worse, interval excludes 0), otherwise the direction only."""
    if diff is None:
        return "not run"
    s = 1 if higher_is_better else -1  # s * diff > 0: NSA better
    if lo is None or hi is None:
        return "equal" if diff == 0 else "same direction (no interval)" if s * diff > 0 else \
            "opposite direction (no interval)"
    if min(s * lo, s * hi) > 0:
        return "reproduced"
    if max(s * lo, s * hi) < 0:
        return "not reproduced"
    if diff == 0:
        return "equal"
    return "same direction, not significant" if s * diff > 0 else "opposite direction, not significant"


def targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets (stated for gpu-small), evaluated on whatever scale ran: pass / fail / None (not run)."""
    rows = []
    loss = sections["loss"]
    if loss.get("status") == "ok" and loss["final_val_diff"]["mean"] is not None:
        d = loss["final_val_diff"]["mean"]
        rows.append({"target": f"val loss: NSA <= full + {VAL_LOSS_MARGIN} nats", "value": d,
                     "pass": d <= VAL_LOSS_MARGIN, "detail": "mean over seeds of the final NSA - full"})
    else:
        rows.append({"target": f"val loss: NSA <= full + {VAL_LOSS_MARGIN} nats", "value": None, "pass": None,
                     "detail": loss.get("reason", "no validation loss")})
    for task in ("niah", "passkey"):
        g = sections[task]
        ok = g.get("status") == "ok"
        m = g.get("min_nsa_cell_within") if ok else None
        rows.append({"target": f"{task} within the training length: NSA >= {NIAH_MIN:.0%} in every cell", "value": m,
                     "pass": None if m is None else m >= NIAH_MIN, "detail": "lowest NSA cell accuracy"})
        flagged = len(g["cells_full_beats_nsa"]) if ok else None
        rows.append({"target": f"{task}: no cell where full beats NSA beyond the 95% interval", "value": flagged,
                     "pass": None if flagged is None else flagged == 0, "detail": "cells where the paired interval "
                     "of NSA - full lies below 0"})
        beyond = g.get("beyond") if ok else None
        if beyond:
            rows.append({"target": f"{task} beyond the training length (up to 2x): NSA >= full",
                         "value": beyond["diff"]["diff"], "pass": beyond["nsa"] >= beyond["full"],
                         "detail": f"NSA {beyond['nsa']:.3f} vs full {beyond['full']:.3f}, paired 95% interval "
                                   f"[{beyond['diff']['lo']:+.3f}, {beyond['diff']['hi']:+.3f}]"})
        else:
            rows.append({"target": f"{task} beyond the training length (up to 2x): NSA >= full", "value": None,
                         "pass": None, "detail": "no length beyond the training length was evaluated"})
    k = sections["kernel"]
    rows.append({"target": "kernel speed-up matches the kernel benchmark issue on the same card", "value": None,
                 "pass": None, "detail": "measured, compare by hand: see Figure 6" if k.get("status") == "ok" else
                 f"not measured: {k.get('reason')}"})
    d = sections["decode"]
    rows.append({"target": "decode speed-up matches the decode benchmark issue on the same card", "value": None,
                 "pass": None, "detail": "measured, compare by hand: see Table 4" if d.get("headline") else
                 f"not measured: {d.get('measured_note')}"})
    return rows


def paper_rows(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per result of the paper that this repo can measure: paper full / NSA, ours full / NSA, verdict."""
    rows = []
    loss = sections["loss"]
    if loss.get("status") == "ok":
        fv, dv = loss["final_val"], loss["final_val_diff"]
        row = {"result": "pretraining loss (lower is better): NSA below full at equal steps", "paper_full": "-",
               "paper_nsa": "lower", "ours_full": fv["full"]["mean"], "ours_nsa": fv["nsa"]["mean"]}
        if dv["n"] >= 2:  # the final validation loss, spread over seeds
            row.update(diff=dv["mean"], lo=dv["lo"], hi=dv["hi"], interval=f"final val loss, t-interval over "
                       f"{dv['n']} seeds")
        else:  # one seed: no seed spread; the paired training-loss difference over the last steps instead
            t = loss["train_tail_diff"]
            row.update(diff=t["diff"], lo=t["lo"], hi=t["hi"], interval="one seed: train loss over the last 10% of "
                       f"steps (same batches; batch noise only); final val NSA - full {fmt(dv['mean'], 3, True)}")
        row["verdict"] = _verdict(row["diff"], row["lo"], row["hi"], higher_is_better=False)
        rows.append(row)
    else:
        rows.append({"result": "pretraining loss: NSA below full at equal steps", "verdict": "not run"})
    rows.append({"result": "general benchmarks average (Table 1)", "paper_full": PAPER["general_average"]["full"],
                 "paper_nsa": PAPER["general_average"]["nsa"], "verdict": "not run",
                 "interval": "no knowledge/reasoning benchmarks in this repo (models this small score at chance)"})
    lb = sections["longbench"]
    if lb.get("status") == "ok":
        tasks = lb["tasks"]
        if lb["average"]:
            rows.append({"result": "LongBench average (Table 2)", "paper_full": PAPER["longbench"]["full"]["average"],
                         "paper_nsa": PAPER["longbench"]["nsa"]["average"], "ours_full": lb["average"]["full"],
                         "ours_nsa": lb["average"]["nsa"], "verdict": _verdict(
                             lb["average"]["nsa"] - lb["average"]["full"], None, None, True)})
        for task in ("hotpotqa", "2wikimqa", "passage_retrieval_en", "lcc"):
            name = task if task in tasks else LOCAL_ANALOGUE.get(task)
            p = {a: PAPER["longbench"][a][task] for a in ARMS}
            if name in tasks:
                t = tasks[name]
                rows.append({"result": f"LongBench {LONGBENCH_ABBREV[task]}" + (
                    f" (offline analogue: {name})" if name != task else ""), "paper_full": p["full"],
                    "paper_nsa": p["nsa"], "ours_full": t["full"], "ours_nsa": t["nsa"], "diff": t["diff"]["diff"],
                    "lo": t["diff"]["lo"], "hi": t["diff"]["hi"], "interval": f"paired bootstrap, {t['n']} samples",
                    "verdict": _verdict(t["diff"]["diff"], t["diff"]["lo"], t["diff"]["hi"], True)})
            else:
                rows.append({"result": f"LongBench {LONGBENCH_ABBREV[task]}", "paper_full": p["full"],
                             "paper_nsa": p["nsa"], "verdict": "not run",
                             "interval": "pass LongBench's data folder: --longbench-dir"})
    niah = sections["niah"]
    if niah.get("status") == "ok" and niah.get("within"):
        w = niah["within"]
        rows.append({"result": "needle in a haystack: NSA perfect at every depth (Figure 5; paper at 64k, here "
                               f"up to the training length {niah['train_length']})",
                     "paper_full": "-", "paper_nsa": 1.0, "ours_full": w["full"], "ours_nsa": w["nsa"],
                     "diff": w["diff"]["diff"], "lo": w["diff"]["lo"], "hi": w["diff"]["hi"],
                     "interval": f"paired bootstrap, {w['n']} needles; lowest NSA cell "
                                 f"{niah['min_nsa_cell_within']:.2f}",
                     "verdict": "reproduced" if niah["min_nsa_cell_within"] >= NIAH_MIN else "not reproduced"})
    else:
        rows.append({"result": "needle in a haystack: NSA perfect at every depth (Figure 5)", "verdict": "not run"})
    k = sections["kernel"]
    by_T = {r["T"]: r for r in k.get("main", [])} if k.get("status") == "ok" else {}
    for T in BENCH_T:
        r = by_T.get(T)
        ours = {kind: r["vs_flash"][kind] if r else None for kind in ("forward", "backward")}
        paper = {kind: PAPER[f"kernel_{kind}"][T] for kind in ("forward", "backward")}
        if ours["forward"] is None:
            verdict = "not run"
        elif all(ours[x] is not None and ours[x] >= 0.8 * paper[x] for x in paper):
            verdict = "reproduced (>= 80% of the paper's)"
        elif ours["forward"] > 1:
            verdict = "faster than full, below the paper"
        else:
            verdict = "not reproduced"
        rows.append({"result": f"kernel speed-up forward / backward at {T // 1024}k (Figure 6)",
                     "paper_nsa": f"{paper['forward']} / {paper['backward']}",
                     "ours_nsa": None if ours["forward"] is None else f"{fmt(ours['forward'], 1)} / "
                                                                      f"{fmt(ours['backward'], 1)}",
                     "verdict": verdict, "interval": "medians of timed repetitions, vs FlashAttention-2"
                     if ours["forward"] is not None else k.get("reason")})
    d = sections["decode"]
    measured = d.get("headline") or {}
    for r in d["paper_sizes"]:
        m = measured.get(r["T"])
        rows.append({"result": f"decoding: tokens loaded per step at {r['T'] // 1024}k (Table 4)",
                     "paper_full": r["T"], "paper_nsa": r["paper_tokens"], "ours_full": r["full"],
                     "ours_nsa": r["nsa"], "verdict": "same count" if abs(
                         r["expected_speedup"] - r["paper_speedup"]) < 0.1 else "different count",
                     "interval": f"expected speed-up {r['expected_speedup']:.1f}x (paper {r['paper_speedup']}x)"
                                 + (f"; measured {m:.1f}x" if m else "; decoding speed not benchmarked")})
    return rows




# ---------------------------------------------------------------------------------------------------------------
# REPORT.md

def _acc(block: dict[str, Any], arm: str) -> str:
    """'0.750 [0.30, 0.95]': an accuracy with its Wilson 95% interval."""
    lo, hi = block[f"{arm}_ci"]
    return f"{fmt(block[arm])} [{lo:.2f}, {hi:.2f}]" if block[arm] is not None else "-"


def _diff(d: dict[str, Any], digits: int = 3) -> str:
    return f"{fmt(d['diff'], digits, True)} {ci(d['lo'], d['hi'], digits, True)}" if d["diff"] is not None else "-"


def _missing(section: dict[str, Any]) -> str:
    return f"_Not available: {section.get('reason', 'not run')}._"


def _mix_layout(mix: dict[str, Any]) -> str:
    """How the synthetic documents fill a chosen sample (data.mix.length / min_length)."""
    where = f"its last {mix['length']} tokens" if mix.get("length") else "the whole sample"
    if mix.get("min_length"):
        return f"several per sample, back to back over {where}, lengths log-uniform from {mix['min_length']} tokens"
    return f"one filling {where}"


def _what_was_run(out: Outputs, sections: dict[str, Any]) -> list[str]:
    m = out.manifest
    lines = ["## What was run", ""]
    invocations = m.get("invocations", [])
    for inv in invocations:
        lines.append(f"- `{inv['command']}` ({inv.get('started', '?')}, {fmt(inv.get('seconds'), 0)} s, "
                     f"{inv.get('result', '?')}" + (f", commit `{inv['git_commit']}`" if inv.get("git_commit") else "")
                     + (f", {inv['device']}" if inv.get("device") else "") + ")")
    # runs resumed or added on other machines: every card that ran a part, in order (the manifest's own fields
    # are the latest invocation's)
    cards = list(dict.fromkeys(inv["device"] for inv in invocations if inv.get("device"))) or [m.get("device", "?")]
    lines += [
        f"- card{'s' if len(cards) > 1 else ''}: {', '.join(cards)}; torch {m.get('torch', '?')}; git commit of the "
        f"latest invocation `{m.get('git_commit', '?')}`",
        f"- seeds: {out.seeds} (both models, every seed: same data order, same initial RNG, same eval samples)",
    ]
    cfg = next((r.config for r in out.runs.values() if r.config), None)
    if cfg:
        mo, tr, op, da = cfg["model"], cfg["train"], cfg["optim"], cfg["data"]
        mix = da.get("mix") or {}
        lines += [
            f"- model: {mo['n_layer']} layers, width {mo['n_embd']}, {mo['n_head']} query / {mo['n_kv_head']} KV "
            f"heads, context {mo['max_seq_len']} tokens, vocabulary {mo['vocab_size']}",
            f"- data: `{da['name']}` ({da['path']}), long-context mix: {mix.get('rate', 0):.0%} of samples replaced "
            f"by synthetic {'/'.join(mix.get('kinds', []))} documents: {_mix_layout(mix)}",
            f"- optimizer: AdamW, {op['schedule']} schedule, peak lr {op['lr']}, warmup {op['warmup_steps']}, "
            f"weight decay {op['weight_decay']}, grad clip {tr['grad_clip']}",
            f"- budget: {tr['steps']} steps x {tr['batch_tokens']:,} tokens = {tr['steps'] * tr['batch_tokens']:,} "
            f"tokens per model",
        ]
    stage1 = m.get("curriculum")  # scripts/reproduce.py --curriculum: the first stage's overrides and length
    if stage1:
        lines.append(f"- curriculum: the first {stage1['steps']} steps with "
                     f"{', '.join(f'`{o}`' for o in stage1['overrides'])} (the run configuration above is the second "
                     "stage's), then the rest without, in the same run")
    rows = []
    for a in ARMS:
        for s in out.seeds:
            r = out.run(a, s)
            last = r.metrics[-1] if r.metrics else {}
            res = r.results or {}
            att = (r.config or {}).get("attention") or {}
            sizes = ", ".join(f"{k}={att[k]}" for k in ("compress_block", "compress_stride", "select_block",
                                                         "num_select", "window") if k in att and a == "nsa")
            if a == "nsa" and att.get("shared_kv"):
                sizes += ", one key/value set for all branches"
            params = (res.get("model") or {}).get("params")
            rows.append([LABELS[a] + (f" ({sizes})" if sizes else ""), s, f"{params:,}" if params else "-",
                         last.get("step"), f"{last['tokens']:,}" if last.get("tokens") else "-",
                         fmt(sum(x.get("step_time") or 0 for x in r.metrics), 0) if r.metrics else "-"])
    lines += ["", table(["model", "seed", "parameters", "steps", "tokens", "train time (s)"], rows)]
    steps = out.progress
    if steps:
        lines += ["", "Steps of the driver (`progress.json`; time summed over resumed attempts):", "",
                  table(["step", "status", "time (s)", "note"],
                        [[k, v.get("status", "?"), fmt(v.get("seconds"), 0), v.get("note") or ""]
                         for k, v in steps.items()])]
        total = sum(v.get("seconds") or 0 for v in steps.values())
        lines += ["", f"Total time of the steps: {total / 60:.1f} min. Their commands (run from the repository root; "
                  "logs in the work folder's `logs/`):", "", "```"]
        lines += [v["command"] for v in steps.values() if v.get("command")] + ["```"]
    return lines


def _targets_md(summary: dict[str, Any]) -> list[str]:
    mark = {True: "pass", False: "**fail**", None: "n/a"}
    rows = [[t["target"], fmt(t["value"], 3) if not isinstance(t["value"], int) else str(t["value"]),
             mark[t["pass"]], t["detail"]] for t in summary["targets"]]
    return ["## Targets", "", "The issue's targets are stated for the `gpu-small` scale; they are evaluated on "
            "whatever ran.", "", table(["target", "value", "result", "detail"], rows)]


def _paper_md(summary: dict[str, Any]) -> list[str]:
    rows = [[r["result"], fmt(r.get("paper_full")), fmt(r.get("paper_nsa")), fmt(r.get("ours_full")),
             fmt(r.get("ours_nsa")), _diff({"diff": r.get("diff"), "lo": r.get("lo"), "hi": r.get("hi")})
             if r.get("diff") is not None else "-", r["verdict"], r.get("interval") or ""]
            for r in summary["paper"]]
    return ["## Next to the paper", "",
            "Paper: NSA (27B-parameter MoE, 270B tokens at 8k context, A100 kernels), numbers as listed in "
            "`NSA.md` (\"The paper's results\"). NSA - full: paired difference with its 95% interval.", "",
            table(["result", "paper full", "paper NSA", "ours full", "ours NSA", "NSA - full [95%]", "verdict",
                   "how measured"], rows)]


def _why(out: Outputs, sections: dict[str, Any], summary: dict[str, Any], report_dir: Path) -> list[str]:
    """What reproduced and what did not, with the reasons the data itself shows."""
    lines = ["## What reproduced, what did not, and why", ""]
    grouped = ("kernel", "decoding")  # one line each below, not one per length
    for r in summary["paper"]:
        if r["result"].startswith(grouped) or (r["verdict"] == "not run" and not r["result"].startswith(
                ("pretraining", "needle"))):
            continue
        lines.append(f"- {r['result']}: **{r['verdict']}**" + (
            f" (ours: full {fmt(r.get('ours_full'))}, NSA {fmt(r.get('ours_nsa'))})"
            if r.get("ours_nsa") is not None else ""))
    for prefix, name in (("kernel", "kernel speed-ups (Figure 6)"), ("decoding", "decoding memory access (Table 4)")):
        verdicts = [f"{r['result'].split(' at ')[1].split(' ')[0]}: {r['verdict']}" for r in summary["paper"]
                    if r["result"].startswith(prefix)]
        lines.append(f"- {name}: " + ("**not run**" if all(v.endswith("not run") for v in verdicts)
                                       else "; ".join(verdicts)))
    not_run = [r["result"] for r in summary["paper"] if r["verdict"] == "not run" and not r["result"].startswith(
        ("kernel", "pretraining", "needle"))]
    if not_run:
        lines.append(f"- not run: {'; '.join(not_run)}")
    lines += ["", "Why, from the data:"]
    scale = out.manifest.get("scale")
    if scale == "cpu":
        lines.append("- This is the CPU pipeline check: its models are far too small and too briefly trained for the "
                     "paper's claims; agreement or disagreement here is not evidence either way.")
    params = {a: next(((out.run(a, s).results or {}).get("model", {}).get("params") for s in out.seeds
                       if out.run(a, s).results), None) for a in ARMS}
    if params["full"] and params["nsa"]:
        lines.append(f"- NSA has {params['nsa'] / params['full'] - 1:+.0%} parameters ({params['nsa']:,} vs "
                     f"{params['full']:,}): its branches' key/value projections, compression MLPs and gates. "
                     "Data, tokens, optimizer and model shape are equal; the parameter count is not.")
    frac = sections["sparsity"].get("nsa_fraction_at_train_length")
    if frac is not None:
        verdict = "really sparse" if frac <= 0.6 else "only mildly sparse" if frac <= 0.85 else "not really sparse"
        lines.append(f"- NSA attended {frac:.0%} of the keys full causal attention reads at the training length "
                     f"({sections['sparsity']['train_length']} tokens): {verdict}.")
    loss = sections["loss"]
    if loss.get("status") == "ok":
        d = loss["final_val_diff"]
        if d["n"] < 2:
            t = loss["train_tail_diff"]
            lines.append(f"- One seed: the final validation difference {fmt(d['mean'], 4, True)} nats has no seed "
                         f"spread; over the last 10% of training steps (same batches for both) NSA - full is "
                         f"{_diff(t, 4)} nats, an interval of batch noise only. Run more seeds (`--seeds 0 1 2`).")
        else:
            lines.append(f"- {d['n']} seeds: final validation NSA - full = {fmt(d['mean'], 4, True)} nats, 95% "
                         f"interval {ci(d['lo'], d['hi'], 4, True)} (seed sd {fmt(d['sd'], 4)}).")
    for task in ("niah", "passkey"):
        g = sections[task]
        if g.get("status") == "ok" and g.get("within"):
            w = g["within"]
            per_seed = g.get("per_seed_within") or []
            signs = {(r["nsa"] > r["full"]) - (r["nsa"] < r["full"]) for r in per_seed}
            if max(w["full"] or 0, w["nsa"] or 0) < 0.05:
                lines.append(f"- {task}: neither model retrieves within the training length (full {fmt(w['full'])}, "
                             f"NSA {fmt(w['nsa'])} over {w['n']} needles): the models have not learnt retrieval, so "
                             "this task cannot separate them here.")
            elif len(per_seed) > 1 and len(signs) > 1:
                seeds_txt = "; ".join(f"seed {r['seed']}: full {fmt(r['full'])}, NSA {fmt(r['nsa'])}" for r in per_seed)
                lines.append(f"- {task}: the seeds disagree on which model retrieves more within the training length "
                             f"({seeds_txt}). Pooled, full {fmt(w['full'])} vs NSA {fmt(w['nsa'])} (McNemar p = "
                             f"{w['mcnemar']['p']:.2g}), but that test treats the needles of all seeds as independent "
                             f"and ignores the spread between seeds, which dominates here: no conclusion from "
                             f"{len(per_seed)} seeds.")
            elif w["mcnemar"]["p"] >= 0.05:
                lines.append(f"- {task}: within the training length full {fmt(w['full'])} vs NSA {fmt(w['nsa'])}: "
                             f"not significantly different (McNemar p = {w['mcnemar']['p']:.2g}, {w['n']} needles).")
            else:
                lead = "NSA" if w["nsa"] > w["full"] else "full attention"
                lines.append(f"- {task}: {lead} retrieves more within the training length (full {fmt(w['full'])}, "
                             f"NSA {fmt(w['nsa'])}, McNemar p = {w['mcnemar']['p']:.2g}, {w['n']} needles).")
        sel = (g.get("nsa_selection") or {}).get("within") if g.get("status") == "ok" else None
        if sel:
            lines.append(f"- {task}, NSA's selection{_diagnosed_seeds(g)}: for the {sel['n']} needles outside the "
                         f"window within the training length, {fmt(sel['selected'])} of the (layer, KV head) pairs "
                         f"selected the needle's block at the answer; NSA answered {fmt(sel['accuracy_found'])} of "
                         f"those most pairs found ({sel['n_found']}) and {fmt(sel['accuracy_missed'])} of the others "
                         f"({sel['n_missed']}).")
    if sections["kernel"].get("status") != "ok":
        lines.append(f"- Kernel speed (Figure 6) not measured: {sections['kernel'].get('reason')}.")
    if not sections["decode"].get("headline"):
        lines.append(f"- Decoding speed not measured: {sections['decode'].get('measured_note')}. Table 4's "
                     "expected speed-ups are this repo's token count, a formula, not a timing.")
    lb = sections["longbench"]
    if lb.get("status") == "ok" and not lb["real_longbench"]:
        lines.append("- LongBench: only the offline look-alike tasks ran (no `--longbench-dir`); their scores are not "
                     "comparable with the paper's absolute numbers.")
    notes = report_dir / "NOTES.md"
    if notes.is_file():
        lines += ["", "### Notes (written by hand in NOTES.md)", "", notes.read_text(encoding="utf-8").strip()]
    return lines


def _loss_md(s: dict[str, Any]) -> list[str]:
    lines = ["## Loss curves (Figure 4)", ""]
    if s.get("status") != "ok":
        return lines + [_missing(s)]
    rows = []
    for seed, e in s["per_seed"].items():
        lowest = e.get("lowest_val") or {}
        rows.append([seed, e["last_step"]["full"], e["last_step"]["nsa"], fmt(e["final_val"]["full"], 4),
                     fmt(e["final_val"]["nsa"], 4), fmt(e["final_val_diff"], 4, True),
                     *(f"{fmt(lowest[a]['loss'], 4)} ({lowest[a]['step']})" if lowest.get(a) else "-" for a in ARMS),
                     f"steps {e['train_tail_steps'][0]}-{e['train_tail_steps'][1]}: {_diff(e['train_tail_diff'], 4)}"])
    fv, d = s["final_val"], s["final_val_diff"]
    rows.append(["mean", "", "", fmt(fv["full"]["mean"], 4), fmt(fv["nsa"]["mean"], 4), fmt(d["mean"], 4, True)
                 + (f" {ci(d['lo'], d['hi'], 4, True)} (t, {d['n']} seeds)" if d["n"] >= 2 else ""), "", "",
                 f"pooled: {_diff(s['train_tail_diff'], 4)}"])
    return lines + [
        "![loss curves](loss_curves.png)", "",
        "Top: training loss (moving mean) and validation loss (fixed held-out tokens) of both models; bottom: "
        "NSA - full at the same step (below 0: NSA lower). Lowest val (step): where the validation loss bottomed "
        "out; a lowest value well before the last step means the model overfit the training text from there on, "
        "and the final difference then also measures how much each model overfit. Data: `loss_curves.json`.", "",
        table(["seed", "full steps", "NSA steps", "final val full", "final val NSA", "NSA - full",
               "lowest val full (step)", "lowest val NSA (step)",
               "train loss NSA - full, last 10% of steps [95% block bootstrap]"], rows)]


def _probes_md(s: dict[str, Any]) -> list[str]:
    if s.get("status") != "ok":
        return []  # the runs logged no probes: nothing to say
    lines = ["## Retrieval during training", "", "![retrieval probes](retrieval_probes.png)", "",
             "Teacher-forced loss on the final answer of fixed synthetic documents of the training length, at every "
             "validation (`train.val_probes`; training/probes.py). A model that knows the answer's format but not "
             "its value pays about ln 10 = 2.30 nats per digit; the onset is the first validation below "
             f"{fmt(s['onset_threshold'], 2)}. Where NSA logged it (`train.val_probe_selection`), the black "
             "curves and the last column: the fraction of its (layer, KV head) pairs whose selected blocks held the "
             "needle at the answer, final and highest. Data: `retrieval_probes.json`.", ""]
    rows = []
    for seed, entry in s["per_seed"].items():
        for kind, arms in entry.items():
            sel = arms["nsa"].get("selected")
            rows.append([kind, seed] + [f"{fmt(arms[a]['loss'][-1]) if arms[a]['loss'] else '-'} (onset "
                                        f"{arms[a]['onset_step'] if arms[a]['onset_step'] is not None else 'none'})"
                                        for a in ("full", "nsa")]
                        + [f"{fmt(sel[-1])} (highest {fmt(max(sel))})" if sel else "-"])
    return lines + [table(["probe", "seed", "full: final loss (onset step)", "NSA: final loss (onset step)",
                           "NSA: needle block selected"], rows)]


def _grid_md(s: dict[str, Any], title: str) -> list[str]:
    task = s.get("task", title)
    lines = [f"## {title}", ""]
    if s.get("status") != "ok":
        return lines + [_missing(s)]
    rows = [[L, b["n"], _acc(b, "full"), _acc(b, "nsa"), _diff(b["diff"]), f"{b['mcnemar']['p']:.2g}"]
            for L, b in s["by_length"].items()]
    for name in ("within", "beyond"):
        b = s.get(name)
        if b:
            label = f"<= {s['train_length']} (within)" if name == "within" else f"> {s['train_length']} (beyond)"
            rows.append([label, b["n"], _acc(b, "full"), _acc(b, "nsa"), _diff(b["diff"]), f"{b['mcnemar']['p']:.2g}"])
    flagged = s["cells_full_beats_nsa"]
    return lines + [
        f"![{task} heatmaps]({task}_heatmaps.png)", "",
        f"Accuracy by needle depth x context length (dashed line: training length {s['train_length']}), "
        f"{len(s['seeds'])} seed(s), haystack: {s.get('haystack') or '-'}; right: NSA - full, boxed cells: full "
        f"ahead beyond the paired 95% interval. Data: `{task}_heatmaps.json`.", "",
        table(["length", "needles", "full [Wilson 95%]", "NSA [Wilson 95%]", "NSA - full [paired 95%]",
               "McNemar p"], rows), "",
        f"Lowest NSA cell within the training length: {fmt(s['min_nsa_cell_within'])}. Cells where full beats NSA "
        f"beyond the interval: {', '.join(f'{L} tokens / {d:g}%' for L, d in flagged) if flagged else 'none'}.",
        *_selection_found_md(s.get("nsa_selection"))]


def _diagnosed_seeds(g: dict[str, Any]) -> str:
    """A note like " (seed 3 only: ...)" when the selection diagnostic covers fewer seeds than the task ran."""
    have, ran = g["nsa_selection"].get("seeds"), g.get("seeds") or []
    if have is None or len(have) == len(ran):
        return ""
    return f" (seed{'s' if len(have) > 1 else ''} {_seed_list(g['nsa_selection'])} only: the other seeds' " \
           "evaluations predate the diagnostic)"


def _seed_list(sel: dict[str, Any]) -> str:
    return ", ".join(map(str, sel.get("seeds") or [])) or "all"


def _seed_words(sel: dict[str, Any]) -> str:
    """The seeds a selection diagnostic covers, as "seed 3" or "seeds 0, 1 pooled"."""
    seeds = sel.get("seeds")
    return f"seed {seeds[0]}" if seeds and len(seeds) == 1 else f"seeds {_seed_list(sel)} pooled"


def _selection_found_md(sel: dict[str, Any] | None) -> list[str]:
    """Did NSA's selection find the needles it needed (outside its window), and did finding them help."""
    if not sel:
        return []
    rows = [[L, v["n"], fmt(v["selected"]), f"{fmt(v['accuracy_found'])} ({v['n_found']})",
             f"{fmt(v['accuracy_missed'])} ({v['n_missed']})", fmt(v["gate_slc"]), fmt(v["gate_win"])]
            for L, v in sel["by_length"].items()]
    return ["", "Did NSA's selection find the needle? For needles outside the sliding window, at the query that "
            f"predicts the answer's first token (evaluation/selection.py; {_seed_words(sel)}): the fraction of "
            "(layer, KV head) pairs whose selected blocks hold the needle, NSA's accuracy where at least half did "
            "and where fewer did (needles in brackets), and the mean gates of the selected and window branches.", "",
            table(["length", "needles", "needle block selected", "NSA accuracy: found", "NSA accuracy: missed",
                   "gate slc", "gate win"], rows)]


def _position_md(s: dict[str, Any]) -> list[str]:
    lines = ["## Loss by position", ""]
    if s.get("status") != "ok":
        return lines + [_missing(s)]
    e = s["bucket_edges"]
    rows = [[f"{a}-{b}", fmt(s["bucket_loss"]["full"][i], 4), fmt(s["bucket_loss"]["nsa"][i], 4),
             fmt(s["bucket_loss"]["nsa"][i] - s["bucket_loss"]["full"][i], 4, True)]
            for i, (a, b) in enumerate(zip(e, e[1:]))]
    for name in ("within", "beyond"):
        if s.get(name):
            rows.append([f"**{name}** training length", fmt(s[name]["full"], 4), fmt(s[name]["nsa"], 4),
                         _diff(s[name]["diff"], 4)])
    return lines + [
        "![loss by position](loss_by_position.png)", "",
        f"Held-out loss at each token position over {s['windows']} windows of {s['length']} tokens (the same windows "
        f"for both), training length {s['train_length']}. Data: `loss_by_position.json`.", "",
        table(["positions", "full", "NSA", "NSA - full"], rows)]


def _ruler_mqar_md(ruler: dict[str, Any], mqar: dict[str, Any]) -> list[str]:
    lines = ["## RULER-style tasks and MQAR", ""]
    if ruler.get("status") == "ok":
        rows = [[k, b["n"], fmt(b["full"], 1), fmt(b["nsa"], 1), _diff(b["diff"], 1)]
                for k, b in ruler["kinds"].items()]
        rows.append(["average", "", fmt(ruler["average"]["full"], 1), fmt(ruler["average"]["nsa"], 1), ""])
        lines += ["RULER-style (0-100, string_match_all; data: `ruler.json`):", "",
                  table(["task", "samples", "full", "NSA", "NSA - full [paired 95%]"], rows), ""]
    else:
        lines += [f"RULER: {_missing(ruler)}", ""]
    if mqar.get("status") == "ok":
        rows = [[L, b["n"], _acc(b, "full"), _acc(b, "nsa"), _diff(b["diff"])] for L, b in mqar["by_length"].items()]
        rows.append(["all", mqar["all"]["n"], _acc(mqar["all"], "full"), _acc(mqar["all"], "nsa"),
                     _diff(mqar["all"]["diff"])])
        lines += [f"MQAR, values recalled (teacher-forced; training length {mqar['train_length']}; data: `mqar.json`):",
                  "", table(["length", "values", "full [Wilson 95%]", "NSA [Wilson 95%]", "NSA - full [paired 95%]"],
                            rows)]
    else:
        lines.append(f"MQAR: {_missing(mqar)}")
    return lines


def _longbench_md(s: dict[str, Any]) -> list[str]:
    lines = ["## LongBench (Table 2 layout)", ""]
    if s.get("status") != "ok":
        return lines + [_missing(s)]
    tasks = list(s["tasks"])
    header = ["model", *(s["tasks"][t]["name"] for t in tasks), "avg (LongBench)", "avg (offline)"]

    def row(name, get, avg, local_avg):
        return [name, *(fmt(get(t)) for t in tasks), fmt(avg), fmt(local_avg)]

    rows = [row(f"paper: {LABELS[a]}", lambda t, a=a: PAPER["longbench"][a].get(t), s["paper_average"][a], None)
            for a in ARMS]
    rows += [row(f"ours: {LABELS[a]}", lambda t, a=a: s["tasks"][t][a], (s["average"] or {}).get(a),
                 (s["local_average"] or {}).get(a)) for a in ARMS]
    rows.append(["ours: NSA - full [paired 95%]", *(_diff(s["tasks"][t]["diff"]) for t in tasks), "", ""])
    rows.append(["samples", *(str(s["tasks"][t]["n"]) for t in tasks), "", ""])
    source = "real LongBench files" if s["real_longbench"] else (
        "offline look-alike tasks only (`local_*`, scored as the LongBench task they imitate)")
    return lines + [f"Scores on the paper's 0-1 scale (LongBench's / 100); {source}. Data: `longbench.json`.", "",
                    table(header, rows)]


def _kernel_md(s: dict[str, Any]) -> list[str]:
    lines = ["## Kernel speed (Figure 6)", ""]
    if s.get("status") != "ok":
        p = PAPER
        return lines + [f"_Not measured: {s.get('reason')}._ The paper's speed-ups (A100, vs Triton "
                        "FlashAttention-2): forward " + " / ".join(f"{p['kernel_forward'][T]}x" for T in BENCH_T)
                        + ", backward " + " / ".join(f"{p['kernel_backward'][T]}x" for T in BENCH_T)
                        + " at 8k / 16k / 32k / 64k. Data: `kernel_speedup.json`."]
    rows = []
    for r in s["main"]:
        f, c = r["vs_flash"], r["vs_cudnn"]
        rows.append([f"{r['T'] // 1024}k", fmt(r["flash_fwd_ms"], 2), fmt(r["nsa_fwd_ms"], 2), fmt(f["forward"], 2),
                     fmt(r["paper"]["forward"], 1), fmt(f["backward"], 2), fmt(r["paper"]["backward"], 1),
                     fmt(f["forward_backward"], 2), fmt(c["forward"], 2), fmt(c["forward_backward"], 2)])
    out = lines + [
        "![kernel speed-up](kernel_speedup.png)" if any(r["vs_flash"]["forward"] for r in s["main"]) else "", "",
        f"{s.get('device')}, torch {s.get('torch')}, triton {s.get('triton')}; `{s.get('command')}`. Speed-up = "
        "baseline time / NSA time (all four NSA kernels as the model calls them); backward = (fwd+bwd) - fwd. "
        "Baseline: PyTorch SDPA's flash backend (FlashAttention-2), also cuDNN; the paper used Triton "
        "FlashAttention-2 on an A100. Data: `kernel_speedup.json`.", "",
        table(["T", "flash fwd ms", "NSA fwd ms", "fwd x", "paper fwd x", "bwd x", "paper bwd x", "fwd+bwd x",
               "fwd x vs cuDNN", "fwd+bwd x vs cuDNN"], rows)]
    return out


def _decode_md(s: dict[str, Any]) -> list[str]:
    measured = s.get("headline") or {}
    rows = [[f"{r['T'] // 1024}k", r["full"], r["nsa"], fmt(r["expected_speedup"], 1), fmt(r["paper_speedup"], 1),
             fmt(measured.get(r["T"]), 1)] for r in s["paper_sizes"]]
    lines = ["## Decoding memory access (Table 4)", "", "![decode](decode.png)", "",
             "Tokens loaded per decoding step with the paper's sizes (l=32, d=16, l'=64, n=16, w=512): full T; "
             "NSA (T - l)//d + 1 + n*l' + w. Measured: one decoding step of the attention at batch 1 in the "
             "benchmark's main shape. Data: `decode.json`.", "",
             table(["context", "full tokens", "NSA tokens", "expected x", "paper x", "measured x"], rows)]
    if s.get("measured"):
        lines += ["", f"Decoding step of the attention ({s.get('device')}; `{s.get('command')}`; shapes "
                  f"{s.get('shapes')}): microseconds per step, CUDA graph, cold L2; full = the fastest SDPA variant.",
                  "", table(["shape", "batch", "context", "NSA us", "full us (best)", "speed-up", "Table 4 x",
                             "NSA % of copy bandwidth"],
                            [[r["shape"], r["B"], f"{r['T'] // 1024}k", fmt(r["nsa_us"], 1),
                              f"{fmt(r['full_us'], 1)} ({r['full_best']})", fmt(r["speedup"], 2),
                              fmt(r["table4_speedup"], 2), fmt(100 * r["nsa_bw_fraction"], 1)
                              if r.get("nsa_bw_fraction") is not None else "-"] for r in s["measured"]])]
    if s.get("generate"):
        graphs = any(r.get("nsa_graph_tok_s") or r.get("full_graph_tok_s") for r in s["generate"])
        header = ["batch", "context", "full tok/s", "NSA tok/s", "NSA / full"]
        header += ["full, CUDA graph", "NSA, CUDA graph", "NSA / full (graphs)"] if graphs else []
        rows = [[r["B"], f"{r['T'] // 1024}k", fmt(r["full_tok_s"], 1), fmt(r["nsa_tok_s"], 1), fmt(r["speedup"], 2)]
                + ([fmt(r.get("full_graph_tok_s"), 1), fmt(r.get("nsa_graph_tok_s"), 1), fmt(r.get("graph_speedup"), 2)]
                   if graphs else []) for r in s["generate"]]
        lines += ["", "End to end `GPT.generate()` of the benchmark's small model, decode tokens/s"
                  + (" (eager, and `cuda_graph=True`)" if graphs else "") + ":", "", table(header, rows)]
    if s.get("trained_sizes"):
        lines += ["", "With the trained NSA's sizes: " + "; ".join(
            f"{r['T']} tokens: {r['nsa']} of {r['full']} ({r['expected_speedup']:.1f}x)" for r in s["trained_sizes"])
            + "."]
    tp = s.get("eval_decode_tok_s") or {}
    if any(tp.values()):
        lines += ["", f"Decoding throughput during eval.py (batched greedy generation, all lengths mixed): "
                  f"full {fmt(tp.get('full'), 0)} tok/s, NSA {fmt(tp.get('nsa'), 0)} tok/s."]
    if s.get("measured_note"):
        lines += ["", f"Measured decoding: {s['measured_note']}."]
    return lines


def _sparsity_md(s: dict[str, Any]) -> list[str]:
    lines = ["## Sparsity NSA actually had", ""]
    if s.get("status") != "ok":
        return lines + [_missing({"reason": "no eval results"})]
    rows = []
    for arm in ARMS:
        for n, v in (s["arms"][arm].get("by_length") or {}).items():
            k = v["keys_per_query"]
            rows.append([LABELS[arm], n, fmt(k.get("cmp"), 1), fmt(k.get("slc"), 1), fmt(k.get("win"), 1),
                         fmt(k.get("total"), 1), fmt(v["dense_keys_per_query"], 1), f"{v['fraction']:.1%}"])
    log = s["arms"]["nsa"].get("training_log") or {}
    return lines + [
        "Mean keys per query over all positions (each attention module's own count: cmp = compressed tokens, "
        "slc = keys in the selected blocks, win = window; a key seen by two branches counts twice), and the "
        "fraction of what full causal attention reads. Data: `sparsity.json`.", "",
        table(["model", "length", "cmp", "slc", "win", "total", "full causal", "fraction"], rows), "",
        "Training log (first metrics row, layer 0): " + (", ".join(f"{k} {v:.1f}" for k, v in log.items()) or "-"),
        *(line for n, v in (s["arms"]["nsa"].get("by_length") or {}).items() for line in _selection_md(n, v))]


def _selection_md(length: str, by_length: dict[str, Any]) -> list[str]:
    """What NSA selected on held-out text, and how much of it neighbouring queries share (kernel design)."""
    m = by_length.get("measured")
    if not m or not m.get("slc_blocks"):
        return []
    shared = m["slc_blocks_shared4"]
    return ["", f"Measured on one held-out window of {length} tokens (mean over layers): {fmt(m['total'], 1)} "
            f"keys per query ({fmt(m['slc'], 1)} in selected blocks), {fmt(m['slc_blocks'], 2)} selected blocks per "
            f"query. If 4 neighbouring queries loaded the union of their blocks once, each would load "
            f"{fmt(shared, 2)} ({shared / m['slc_blocks']:.0%} of the loads): the saving a selected-attention "
            "kernel that shares blocks across positions could get."]


def write_report(out: Outputs, sections: dict[str, Any], summary: dict[str, Any], report_dir: Path) -> Path:
    scale = out.manifest.get("scale", "?")
    lines = [f"# Full attention vs NSA: `{scale}` reproduction report", ""]
    if scale == "cpu":
        lines += [CPU_BANNER, ""]
    lines += [f"Generated by `scripts/reproduce.py` from the outputs in `{out.manifest.get('work_dir', out.work_dir)}`"
              " only (regenerate: `python scripts/reproduce.py --scale "
              f"{scale} --report-only`). Every figure's data is the JSON file of the same name beside it.", ""]
    parts = [
        _what_was_run(out, sections), _targets_md(summary), _paper_md(summary),
        _why(out, sections, summary, report_dir),
        _loss_md(sections["loss"]), _probes_md(sections["probes"]),
        _grid_md(sections["niah"], "Needle in a haystack (Figure 5)"),
        _grid_md(sections["passkey"], "Passkey retrieval"), _position_md(sections["position"]),
        _ruler_mqar_md(sections["ruler"], sections["mqar"]), _longbench_md(sections["longbench"]),
        _kernel_md(sections["kernel"]), _decode_md(sections["decode"]), _sparsity_md(sections["sparsity"]),
    ]
    for part in parts:
        lines += [*part, ""]
    path = report_dir / "REPORT.md"
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path
