"""scripts/reproduce.py and its report (evaluation/compare.py, compare_report.py, stats.py).

The report is built from fabricated outputs whose every number is known, so the figures, their JSON and
REPORT.md can be checked against the inputs. The driver is run with its train/eval/bench commands replaced by a
fake script that writes the same kind of outputs in milliseconds: a second run skips the finished steps, a changed
eval setting re-runs only the evals, a time budget stops cleanly and the next run continues, and a work folder
trained with other settings is refused. With --parallel the fake also logs when each step starts and ends and on
which GPU, so the order and the GPU of every step can be checked.
"""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml

from evaluation.compare import build, decode_tokens
from evaluation.stats import mcnemar_exact, paired_bootstrap, t_interval, wilson
from tests.conftest import REPO

TRAIN_LENGTH = 64
LENGTHS, DEPTHS, SAMPLES = [32, 64, 128], [0.0, 50.0, 100.0], 4
FINAL_VAL = {("full", 0): 3.0, ("nsa", 0): 2.9, ("full", 1): 3.1, ("nsa", 1): 2.9}  # NSA - full: -0.1, -0.2


# ---------------------------------------------------------------------------------------------------------------
# statistics

def test_wilson_matches_hand_computed_values():
    lo, hi = wilson(0, 4)  # p = 0: lo = 0, hi = z^2 / (n + z^2)
    assert lo == 0 and hi == pytest.approx(1.959964**2 / (4 + 1.959964**2), rel=1e-6)
    lo, hi = wilson(5, 10)  # symmetric around 0.5
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.2366, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_paired_bootstrap_and_mcnemar_and_t_interval():
    b = paired_bootstrap([0, 0, 0, 0], [1, 1, 1, 1])
    assert (b["diff"], b["lo"], b["hi"], b["n"]) == (1.0, 1.0, 1.0, 4)
    b = paired_bootstrap([0, 1] * 50, [1, 1] * 50)
    assert b["diff"] == 0.5 and 0.3 < b["lo"] < 0.5 < b["hi"] < 0.7
    assert paired_bootstrap([], [])["diff"] is None
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap([1], [1, 2])
    m = mcnemar_exact([False] * 6 + [True] * 3, [True] * 6 + [True] * 3)  # 6 discordant pairs, all for B
    assert (m["a_only"], m["b_only"]) == (0, 6) and m["p"] == pytest.approx(2 / 64)
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0
    t = t_interval([1.0, 2.0, 3.0])
    assert t["mean"] == 2.0 and t["sd"] == pytest.approx(1.0)
    assert t["hi"] - t["mean"] == pytest.approx(4.303 / math.sqrt(3))
    assert t_interval([5.0])["lo"] is None


def test_decode_token_count_is_the_papers_table_4():
    paper = dict(compress_block=32, compress_stride=16, select_block=64, num_select=16, window=512)
    assert decode_tokens(65536, **paper) == 5631  # NSA.md: (T - l)//d + 1 + n*l' + w; the paper rounds to 5632
    assert round(8192 / decode_tokens(8192, **paper), 1) == 4.0


# ---------------------------------------------------------------------------------------------------------------
# the report, from fabricated outputs


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _correct(task: str, arm: str, L: int, d: float) -> bool:
    """Planted needle outcomes. niah: both right everywhere within the training length except the cell
    (64, 50%), where only full is right; beyond it only NSA is right. passkey: NSA always, full never beyond."""
    if task == "niah":
        if L > TRAIN_LENGTH:
            return arm == "nsa"
        return not (arm == "nsa" and L == 64 and d == 50.0)
    return arm == "nsa" or L <= TRAIN_LENGTH


def _selection(L: int, d: float) -> dict:
    """Planted needle-selection diagnostics of NSA: the last depth's needle lies in the window; the first depth's
    is found by every (layer, KV head) pair, the others by a quarter."""
    return {"needle_selected": 1.0 if d == DEPTHS[0] else 0.25, "needle_in_window": d == DEPTHS[-1],
            "gate_slc": 0.5, "gate_win": 0.25 * (1 + (d == DEPTHS[-1]))}


PROBE = {"full": {10: 2.3, 20: 0.5}, "nsa": {10: 1.0, 20: 0.2}}  # onset (< ln(10) / 2): full at 20, NSA at 10


def fabricate(work: Path, seeds=(0, 1)) -> None:
    for arm in ("full", "nsa"):
        for seed in seeds:
            run, ev = work / "runs" / f"{arm}-s{seed}", work / "eval" / f"{arm}-s{seed}"
            attention = {"name": arm} if arm == "full" else {
                "name": "nsa", "compress_block": 8, "compress_stride": 8, "select_block": 8, "num_select": 4,
                "window": 16, "shared_kv": seed == 1}
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(yaml.safe_dump({
                "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_kv_head": 1, "max_seq_len": TRAIN_LENGTH,
                          "vocab_size": 256},
                "attention": attention,
                "data": {"name": "fake", "path": "text", "mix": {"rate": 0.25, "length": None, "kinds": ["passkey"]}},
                "optim": {"schedule": "cosine", "lr": 0.003, "warmup_steps": 2, "weight_decay": 0.1},
                "train": {"steps": 20, "batch_tokens": 1024, "grad_clip": 1.0}}))
            rows = []
            for step in range(1, 21):
                row = {"step": step, "tokens": 1024 * step, "loss": 5.0 - 0.05 * step - (0.1 if arm == "nsa" else 0),
                       "step_time": 0.5}
                if step == 1:
                    row.update({"attn_keys_total": 20.0} if arm == "nsa" else {"attn_keys_full": 32.5})
                if step in (10, 20):
                    # higher at step 10 than at the end, except full attention's seed 1: it overfits after step 10
                    early = -0.3 if (arm, seed) == ("full", 1) else 0.5
                    row["val_loss"] = FINAL_VAL[(arm, seed)] + (early if step == 10 else 0.0)
                    row["val_probe_passkey"] = PROBE[arm][step]
                    if arm == "nsa" and seed == 1:  # train.val_probe_selection on in one seed only
                        row["val_probe_passkey_selected"] = {10: 0.25, 20: 0.75}[step]
                rows.append(row)
            _jsonl(run / "metrics.jsonl", rows)
            fraction = 0.4 if arm == "nsa" else 1.0
            _json(ev / "results.json", {
                "model": {"name": f"{arm}-s{seed}", "attention": arm, "params": 1000 if arm == "full" else 1200,
                          "train_length": TRAIN_LENGTH},
                "step": 20, "tokens": 20480, "seed": 0, "max_length": 128,
                "sparsity": {"attention": arm, "64": {
                    "keys_per_query": {"total": 32.5 * fraction}, "dense_keys_per_query": 32.5, "fraction": fraction,
                    **({"measured": {"total": 13.0, "slc": 6.0, "slc_blocks": 2.0, "slc_blocks_shared4": 0.75}}
                       if arm == "nsa" else {})}},
                "throughput": {"decode_tok_s": 100.0 if arm == "full" else 50.0},
                "niah": {"haystack": "corpus"},
                "longbench": {"local_passage_retrieval": 0.0 if arm == "full" else 100.0,
                              "local_passage_retrieval/samples": 2, "local_average": 0.0 if arm == "full" else 100.0},
            })
            for task in ("niah", "passkey"):
                _jsonl(ev / task / "predictions.jsonl", [
                    {"length": L, "depth": d, "sample": s, "correct": _correct(task, arm, L, d),
                     **(_selection(L, d) if arm == "nsa" else {})}
                    for L in LENGTHS for d in DEPTHS for s in range(SAMPLES)])
            per_pos = [4.0 + (0.0 if arm == "full" else -0.2) + (0.5 if t >= TRAIN_LENGTH else 0) for t in range(128)]
            _json(ev / "ppl_position" / "loss_by_position.json", {
                "length": 128, "train_length": TRAIN_LENGTH, "loss_by_position": per_pos, "windows": 2,
                "bucket_edges": [0, 32, 64, 96, 128]})
            _jsonl(ev / "ruler" / "predictions.jsonl", [
                {"task": "niah_single", "length": 64, "pred": "1234" if arm == "nsa" else "no", "outputs": ["1234"]},
                {"task": "niah_single", "length": 64, "pred": "5678", "outputs": ["5678"]}])
            _jsonl(ev / "mqar" / "predictions.jsonl", [
                {"length": 64, "seed": 7, "answers": ["1", "2"], "recalled": [True, arm == "nsa"]}])
            _jsonl(ev / "longbench" / "pred" / "local_passage_retrieval.jsonl", [
                {"pred": "Paragraph 3" if arm == "nsa" else "Paragraph 1", "answers": ["Paragraph 3"],
                 "all_classes": None, "length": 50, "_id": f"x{i}"} for i in range(2)])
    _json(work / "bench" / "attention.json", {
        "device": "FakeGPU", "torch": "0", "triton": "0", "command": "bench_attention.py",
        "main": {"8192": {"nsa": {"total_fwd": 1.0, "total_fwdbwd": 3.0}, "flash": {"fwd": 2.0, "fwdbwd": 5.0},
                          "cudnn": {"fwd": 1.5, "fwdbwd": 4.5}}}})
    _json(work / "bench" / "decode.json", {
        "device": "FakeGPU", "command": "bench_decode.py", "shapes": {"main": {}},
        "attn": {f"main-B1-T{k}k": {"nsa": {"us": 10.0}, "full": {"us": 10.0 * x, "best": "folded_flash"},
                                    "speedup": x, "table4_speedup": 4.0} for k, x in ((8, 3.0), (64, 9.5))},
        "generate": {"full-B1-T8k": {"decode_tok_s": 100.0}, "nsa-B1-T8k": {"decode_tok_s": 150.0},
                     "full-graph-B1-T8k": {"decode_tok_s": 400.0}, "nsa-graph-B1-T8k": {"decode_tok_s": 800.0}}})
    _json(work / "manifest.json", {"scale": "gpu-small", "seeds": list(seeds), "device": "FakeGPU",
                                   "invocations": [{"command": "python scripts/reproduce.py --scale gpu-small",
                                                    "started": "now", "seconds": 1.0},
                                                   {"command": "python scripts/reproduce.py --scale gpu-small",
                                                    "started": "later", "seconds": 2.0, "device": "OtherGPU"}]})
    _json(work / "progress.json", {"eval/full-s0": {"status": "done", "seconds": 12.0, "command": "python eval.py"}})


FILES = ["REPORT.md", "summary.json", "loss_curves.png", "loss_curves.json", "niah_heatmaps.png",
         "niah_heatmaps.json", "passkey_heatmaps.png", "passkey_heatmaps.json", "loss_by_position.png",
         "loss_by_position.json", "kernel_speedup.png", "kernel_speedup.json", "decode.png", "decode.json",
         "longbench.json", "ruler.json", "mqar.json", "sparsity.json", "retrieval_probes.png",
         "retrieval_probes.json"]
SECTIONS = ["## What was run", "## Targets", "## Next to the paper", "## What reproduced, what did not, and why",
            "## Loss curves (Figure 4)", "## Retrieval during training", "## Needle in a haystack (Figure 5)",
            "## Passkey retrieval",
            "## Loss by position", "## RULER-style tasks and MQAR", "## LongBench (Table 2 layout)",
            "## Kernel speed (Figure 6)", "## Decoding memory access (Table 4)", "## Sparsity NSA actually had"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work, out = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("report")
    fabricate(work)
    (out / "NOTES.md").write_text("A hand-written remark.")
    result = build(work, out)
    return out, result, (out / "REPORT.md").read_text()


def test_every_figure_json_and_section_is_written(report):
    out, _, text = report
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        if name.endswith(".json"):
            json.loads((out / name).read_text())
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "CPU pipeline check" not in text  # the banner is for the cpu scale only
    assert "A hand-written remark." in text


def test_the_nsa_rows_name_their_sizes_and_shared_keys(report):
    sizes = "compress_block=8, compress_stride=8, select_block=8, num_select=4, window=16"
    assert f"| NSA ({sizes}) | 0 |" in report[2]
    assert f"| NSA ({sizes}, one key/value set for all branches) | 1 |" in report[2]


def test_every_card_that_ran_a_part_is_named(report):
    text = report[2]
    assert "s, ?, OtherGPU)" in text and "- card: OtherGPU;" in text  # the one invocation that names its card


def acc_at(L: int, depths: list[float]) -> float:
    return sum(_correct("niah", "nsa", L, d) for d in depths) / len(depths)


def test_needle_selection_table(report):
    """NSA's selection diagnostics, per length over the needles outside the window, from the planted rows."""
    _, result, text = report
    sel = result["sections"]["niah"]["nsa_selection"]
    far = [d for d in DEPTHS if d != DEPTHS[-1]]
    for L in LENGTHS:
        v = sel["by_length"][str(L)]
        n = len(far) * SAMPLES * 2  # two seeds pooled
        assert v["n"] == n and v["n_found"] == SAMPLES * 2 and v["n_missed"] == n - SAMPLES * 2
        assert v["selected"] == pytest.approx((1.0 + 0.25 * (len(far) - 1)) / len(far))
        assert v["accuracy_found"] == pytest.approx(acc_at(L, far[:1]))
        assert v["accuracy_missed"] == pytest.approx(acc_at(L, far[1:]))
        assert v["gate_slc"] == 0.5 and v["gate_win"] == 0.25
    within = sel["within"]  # lengths 32 and 64
    assert within["n"] == 2 * len(far) * SAMPLES * 2 and within["n_found"] == 2 * SAMPLES * 2
    assert within["accuracy_missed"] == pytest.approx((acc_at(32, far[1:]) + acc_at(64, far[1:])) / 2)
    assert "| needle block selected |" in text and result["sections"]["passkey"]["nsa_selection"] is not None
    assert f"- niah, NSA's selection: for the {within['n']} needles outside the window" in text


def test_loss_numbers_match_the_inputs(report):
    out, result, text = report
    loss = json.loads((out / "loss_curves.json").read_text())
    assert loss["final_val"]["full"]["mean"] == pytest.approx(3.05)
    assert loss["final_val"]["nsa"]["mean"] == pytest.approx(2.9)
    d = loss["final_val_diff"]
    assert d["mean"] == pytest.approx(-0.15) and d["n"] == 2
    half = 12.706 * math.sqrt(0.005) / math.sqrt(2)  # t(1) x sd of (-0.1, -0.2) / sqrt(2)
    assert d["lo"] == pytest.approx(-0.15 - half, abs=1e-3) and d["hi"] == pytest.approx(-0.15 + half, abs=1e-3)
    assert loss["per_seed"]["1"]["train_tail_diff"]["diff"] == pytest.approx(-0.1)
    assert "| 1 | 20 | 20 | 3.1000 | 2.9000 | -0.2000 | 2.8000 (10) | 2.9000 (20) |" in text
    assert loss["per_seed"]["0"]["lowest_val"] == {"full": {"loss": pytest.approx(3.0), "step": 20},
                                                   "nsa": {"loss": pytest.approx(2.9), "step": 20}}
    assert loss["per_seed"]["1"]["lowest_val"]["full"] == {"loss": pytest.approx(2.8), "step": 10}
    row = next(r for r in result["paper"] if r["result"].startswith("pretraining"))
    assert row["verdict"] == "same direction, not significant"  # 2 seeds: the interval spans 0
    target = next(t for t in result["targets"] if t["target"].startswith("val loss"))
    assert target["pass"] is True and target["value"] == pytest.approx(-0.15)


def test_retrieval_probe_curves_and_onsets(report, tmp_path):
    out, result, text = report
    probes = json.loads((out / "retrieval_probes.json").read_text())
    for seed in ("0", "1"):
        assert set(probes["per_seed"][seed]) == {"passkey"}  # the selection is not a probe kind of its own
        curves = probes["per_seed"][seed]["passkey"]
        assert curves["full"] == {"step": [10, 20], "loss": [2.3, 0.5], "onset_step": 20}
        selected = {"selected_step": [10, 20], "selected": [0.25, 0.75]} if seed == "1" else {}
        assert curves["nsa"] == {"step": [10, 20], "loss": [1.0, 0.2], "onset_step": 10, **selected}
    assert "| passkey | 0 | 0.500 (onset 20) | 0.200 (onset 10) | - |" in text
    assert "| passkey | 1 | 0.500 (onset 20) | 0.200 (onset 10) | 0.750 (highest 0.750) |" in text
    # runs without probes: no figure, no section, no error
    work, bare = tmp_path / "work", tmp_path / "report"
    fabricate(work, seeds=(0,))
    for path in work.glob("runs/*/metrics.jsonl"):
        rows = [{k: v for k, v in json.loads(line).items() if not k.startswith("val_probe_")}
                for line in path.read_text().splitlines()]
        _jsonl(path, rows)
    assert build(work, bare)["sections"]["probes"]["status"] == "missing"
    assert not (bare / "retrieval_probes.png").exists()
    assert "## Retrieval during training" not in (bare / "REPORT.md").read_text()


def test_needle_cells_paired_statistics_and_targets(report):
    out, result, text = report
    niah = json.loads((out / "niah_heatmaps.json").read_text())
    assert niah["lengths"] == LENGTHS and niah["depths"] == DEPTHS
    assert niah["cells_full_beats_nsa"] == [[64, 50.0]]  # 8 paired needles (2 seeds x 4), all full-only
    cell = next(c for c in niah["cells"] if c["length"] == 64 and c["depth"] == 50.0)
    assert (cell["n"], cell["full"], cell["nsa"]) == (8, 1.0, 0.0)
    assert niah["within"]["nsa"] == pytest.approx(1 - 8 / 48) and niah["within"]["full"] == 1.0
    assert niah["beyond"]["nsa"] == 1.0 and niah["beyond"]["full"] == 0.0
    assert niah["beyond"]["mcnemar"]["b_only"] == 24 and niah["min_nsa_cell_within"] == 0.0
    assert niah["grid"]["nsa"][1] == [1.0, 0.0, 1.0]  # depth 50%: lengths 32, 64, 128
    assert "64 tokens / 50%" in text
    assert [(r["seed"], r["n"], r["full"]) for r in niah["per_seed_within"]] == [(0, 24, 1.0), (1, 24, 1.0)]
    assert all(r["nsa"] == pytest.approx(1 - 4 / 24) for r in niah["per_seed_within"])
    assert "- niah: full attention retrieves more within the training length" in text  # both seeds agree
    t = {r["target"]: r for r in result["targets"]}
    assert t["niah: no cell where full beats NSA beyond the 95% interval"]["pass"] is False
    assert t["niah within the training length: NSA >= 95% in every cell"]["pass"] is False
    assert t["passkey within the training length: NSA >= 95% in every cell"]["pass"] is True
    assert t["passkey beyond the training length (up to 2x): NSA >= full"]["value"] == 1.0


def test_other_sections_match_the_inputs(report):
    out, _, text = report
    pos = json.loads((out / "loss_by_position.json").read_text())
    assert pos["within"]["nsa"] - pos["within"]["full"] == pytest.approx(-0.2)
    assert pos["beyond"]["full"] == pytest.approx(4.5)
    ruler = json.loads((out / "ruler.json").read_text())
    assert ruler["kinds"]["niah_single"]["full"] == 50.0 and ruler["kinds"]["niah_single"]["nsa"] == 100.0
    mqar = json.loads((out / "mqar.json").read_text())
    assert mqar["all"]["full"] == 0.5 and mqar["all"]["nsa"] == 1.0 and mqar["all"]["n"] == 4
    lb = json.loads((out / "longbench.json").read_text())
    task = lb["tasks"]["local_passage_retrieval"]
    assert (task["full"], task["nsa"], task["n"], task["diff"]["diff"]) == (0.0, 1.0, 4, 1.0)  # per-sample rescore
    assert "| ours: NSA | 1.000 |" in text
    kernel = json.loads((out / "kernel_speedup.json").read_text())
    row = kernel["main"][0]
    assert row["vs_flash"]["forward"] == 2.0 and row["vs_flash"]["backward"] == 1.5
    assert row["vs_flash"]["forward_backward"] == pytest.approx(5 / 3) and row["vs_cudnn"]["forward"] == 1.5
    assert "| 8k | 2.00 | 1.00 | 2.00 | 2.1 | 1.50 | 1.1 |" in text
    dec = json.loads((out / "decode.json").read_text())
    assert [r["nsa"] for r in dec["paper_sizes"]] == [2047, 2559, 3583, 5631]
    assert dec["trained_sizes"][0] == {"T": 64, "full": 64, "nsa": 8 + 32 + 16, "expected_speedup": 64 / 56}
    assert dec["eval_decode_tok_s"] == {"full": 100.0, "nsa": 50.0}
    assert dec["headline"] == {"8192": 3.0, "65536": 9.5}
    assert dec["generate"] == [{"B": 1, "T": 8192, "full_tok_s": 100.0, "nsa_tok_s": 150.0, "speedup": 1.5,
                                "full_graph_tok_s": 400.0, "nsa_graph_tok_s": 800.0, "graph_speedup": 2.0}]
    assert "| 1 | 8k | 100.0 | 150.0 | 1.50 | 400.0 | 800.0 | 2.00 |" in text
    assert "| 64k | 65536 | 5631 | 11.6 | 11.6 | 9.5 |" in text
    sp = json.loads((out / "sparsity.json").read_text())
    assert sp["nsa_fraction_at_train_length"] == 0.4 and "40.0%" in text
    assert sp["arms"]["nsa"]["by_length"]["64"]["measured"]["slc_blocks_shared4"] == 0.75
    assert "2.00 selected blocks per query" in text and "each would load 0.75 (38% of the loads)" in text


def test_seeds_that_disagree_on_retrieval_give_no_conclusion(tmp_path):
    """Pooled over seeds, NSA looks significantly better; per seed, each model wins once: the report must say
    that the seeds disagree instead of trusting the pooled test (it ignores the spread between seeds)."""
    work = tmp_path / "work"
    fabricate(work)
    planted = {("full", 0): 1.0, ("nsa", 0): 0.75, ("full", 1): 0.0, ("nsa", 1): 1.0}  # right: samples < 4 * rate
    for (arm, seed), rate in planted.items():
        _jsonl(work / "eval" / f"{arm}-s{seed}" / "passkey" / "predictions.jsonl", [
            {"length": L, "depth": d, "sample": s, "correct": s < SAMPLES * rate}
            for L in LENGTHS for d in DEPTHS for s in range(SAMPLES)])
    result = build(work, tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    per_seed = result["sections"]["passkey"]["per_seed_within"]
    assert [(r["seed"], r["full"], r["nsa"]) for r in per_seed] == [(0, 1.0, 0.75), (1, 0.0, 1.0)]
    assert result["sections"]["passkey"]["within"]["mcnemar"]["p"] < 0.05  # the pooled test alone would claim NSA
    assert "- passkey: the seeds disagree on which model retrieves more" in text
    assert "seed 0: full 1.000, NSA 0.750; seed 1: full 0.000, NSA 1.000" in text
    assert "passkey: NSA retrieves more" not in text


def test_report_of_a_partial_run_says_what_is_missing(tmp_path):
    work = tmp_path / "work"
    fabricate(work, seeds=(0,))
    for f in (work / "eval").glob("nsa-s0/results.json"):
        f.unlink()  # the NSA evaluation did not run
    (work / "bench" / "attention.json").unlink()
    (work / "bench" / "decode.json").unlink()
    result = build(work, tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert "_Not available: no seed has niah predictions for both models._" in text
    assert not (tmp_path / "out" / "kernel_speedup.png").exists()
    assert result["sections"]["loss"]["status"] == "ok"  # training finished: its section is there
    assert "one seed" in text
    assert "Measured decoding: not run." in text and result["sections"]["decode"]["headline"] == {}


def test_assemble_ablation_pairs_a_variant_with_the_baselines_full_runs(tmp_path):
    """scripts/assemble_ablation.py: the baseline's full-attention runs and benchmarks, the variant's NSA runs
    (without checkpoints) with the commands it recorded, the invocations of the chosen seeds; the report builds."""
    spec = importlib.util.spec_from_file_location("assemble_ablation", REPO / "scripts" / "assemble_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base, other, variant, out = (tmp_path / n for n in ("base", "other", "variant", "out"))
    fabricate(base)
    fabricate(other)  # the variant's NSA run of seed 1: a fabricated run whose metrics are told apart below
    (other / "runs" / "nsa-s1" / "checkpoints").mkdir()
    (other / "runs" / "nsa-s1" / "checkpoints" / "step_20.pt").write_bytes(b"x")
    for sub in ("runs", "eval"):  # gpu_nsa_ablation.sh's layout: <variant>/{runs,eval}/nsa-s<seed>
        (variant / sub).mkdir(parents=True)
        (other / sub / "nsa-s1").rename(variant / sub / "nsa-s1")
    _jsonl(variant / "runs" / "nsa-s1" / "metrics.jsonl", [{"step": 20, "tokens": 20480, "loss": 1.25}])
    (variant / "commands_nsa-s1.txt").write_text("python train.py attention.shared_kv=true\npython eval.py x\n")
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["invocations"][0]["command"] += " --seeds 0"
    (base / "manifest.json").write_text(json.dumps(manifest))
    mod.assemble(base, variant, [1], out, {"command": "bash scripts/gpu_nsa_ablation.sh", "started": "t",
                                           "seconds": 1.0, "git_commit": "abc", "device": "FakeGPU"})
    assert not list(out.rglob("*.pt")) and not (out / "runs" / "nsa-s1" / "checkpoints").exists()
    assert (out / "runs" / "full-s1" / "metrics.jsonl").read_text() == \
        (base / "runs" / "full-s1" / "metrics.jsonl").read_text()
    assert json.loads((out / "runs" / "nsa-s1" / "metrics.jsonl").read_text())["loss"] == 1.25
    progress = json.loads((out / "progress.json").read_text())
    assert progress["train/nsa-s1"]["command"] == "python train.py attention.shared_kv=true"
    assert progress["eval/nsa-s1"]["command"] == "python eval.py x"
    m = json.loads((out / "manifest.json").read_text())
    assert m["seeds"] == [1] and [i["command"] for i in m["invocations"]] == [
        "python scripts/reproduce.py --scale gpu-small", "bash scripts/gpu_nsa_ablation.sh"]  # not the seed-0 one
    assert build(out, tmp_path / "report")["sections"]["loss"]["status"] == "ok"
    with pytest.raises(SystemExit, match="is not empty"):
        mod.assemble(base, variant, [1], out, {})
    with pytest.raises(SystemExit, match="holds no run of nsa-s0"):
        mod.assemble(base, variant, [0], tmp_path / "out2", {"started": "t", "git_commit": "abc"})


# ---------------------------------------------------------------------------------------------------------------
# the driver, with a fake train/eval/bench

FAKE = r'''
import json, os, sys, time
from pathlib import Path
script, args = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a and not a.startswith("-"))
step = {"train.py": "train/" + Path(args.get("run_dir", "")).name,
        "eval.py": "eval/" + Path(args.get("out_dir", "")).name}.get(script, Path(script).stem)


def event(what):
    if "FAKE_EVENTS" in os.environ:  # one short append per line: lines of concurrent steps do not mix
        with open(os.environ["FAKE_EVENTS"], "a") as f:
            f.write(json.dumps({"event": what, "step": step, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")


event("start")
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(script + "\n")
if os.environ.get("FAKE_FAIL") == step:
    event("end")
    sys.exit(1)
if os.environ.get("FAKE_SLOW") == step:
    time.sleep(1.5)
if script == "train.py":
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    ckpt = Path(args["run_dir"]) / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / ("step_%07d.pt" % int(args["train.steps"]))).write_bytes(b"")
elif script == "eval.py":
    last = max(int(p.stem[5:]) for p in (Path(args["checkpoint"]) / "checkpoints").glob("step_*.pt"))
    Path(args["out_dir"]).mkdir(parents=True, exist_ok=True)
    (Path(args["out_dir"]) / "results.json").write_text(json.dumps({"step": last}))
elif "--out" in sys.argv:  # a benchmark (run only where CUDA is, or is faked)
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("{}")
event("end")
'''


@pytest.fixture()
def driver(tmp_path, monkeypatch):
    """scripts/reproduce.py's main(), its commands run by the fake script; returns (run, calls)."""
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setattr(mod.Driver, "launcher", lambda self, script: ["python", str(fake), script])
    monkeypatch.setattr(mod.Driver, "prepare_data", lambda self: calls.open("a").write("prepare\n"))
    work, out = tmp_path / "work", tmp_path / "report"

    def run(*extra):
        calls.write_text("")
        rc = mod.main(["--scale", "cpu", "--steps", "3", "--work-dir", str(work), "--report-dir", str(out), *extra])
        return rc, [c for c in calls.read_text().split() if c in ("prepare", "train.py", "eval.py")]
    return run, work, out


def test_driver_runs_every_step_then_skips_finished_ones(driver, capsys):
    run, work, out = driver
    rc, calls = run()
    assert rc == 0 and calls == ["train.py", "train.py", "eval.py", "eval.py"]
    progress = json.loads((work / "progress.json").read_text())
    assert {k: v["status"] for k, v in progress.items() if k.startswith(("train", "eval"))} == {
        "train/full-s0": "done", "train/nsa-s0": "done", "eval/full-s0": "done", "eval/nsa-s0": "done"}
    assert (out / "REPORT.md").is_file() and (work / "manifest.json").is_file()
    assert "gpu" not in progress["train/full-s0"]  # one step after another: no GPU pinned
    assert json.loads((work / "manifest.json").read_text())["invocations"][-1]["parallel"] == 1
    rc, calls = run()
    assert rc == 0 and calls == []  # everything finished earlier is skipped
    assert "[done] train/nsa-s0 (skipped: finished earlier)" in capsys.readouterr().out
    rc, calls = run("--eval-set", "niah.samples=1")  # another eval setting: only the evals run again
    assert rc == 0 and calls == ["eval.py", "eval.py"]
    rc, calls = run("--seeds", "0", "1", "--eval-set", "niah.samples=1")  # a new seed: only its runs
    assert rc == 0 and calls == ["train.py", "train.py", "eval.py", "eval.py"]
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1] and [i["result"] for i in manifest["invocations"]] == ["complete"] * 4


def test_driver_stops_at_the_time_budget_and_continues(driver, monkeypatch):
    run, work, _ = driver
    monkeypatch.setenv("FAKE_SLEEP", "60")
    rc, calls = run("--time-budget", "10", "--reserve", "1")
    assert rc == 3 and calls == ["train.py"]  # stopped inside the first training run
    assert json.loads((work / "progress.json").read_text())["train/full-s0"]["status"] == "stopped"
    monkeypatch.setenv("FAKE_SLEEP", "0")
    rc, calls = run()
    assert rc == 0 and calls == ["train.py", "train.py", "eval.py", "eval.py"]


def test_driver_refuses_a_work_folder_trained_otherwise_and_bad_overrides(driver):
    run, _, _ = driver
    with pytest.raises(SystemExit, match=r"^error: experiment=repro_cpu_full with --train-set .*optim\.lrr"):
        run("--train-set", "optim.lrr=1e-4")
    with pytest.raises(SystemExit, match=r"^error: eval overrides \(--eval-set\): .*niah\.sampels"):
        run("--eval-set", "niah.sampels=3")
    assert run()[0] == 0
    with pytest.raises(SystemExit, match="trained with"):
        run("--train-set", "optim.lr=1e-4")


def test_driver_curriculum_trains_the_first_stage_then_the_rest_in_the_same_folder(driver, monkeypatch, capsys):
    run, work, out = driver
    rc, calls = run("--curriculum", "data.mix.filler=1.0", "--curriculum-steps", "2")
    assert rc == 0 and calls == ["train.py"] * 4 + ["eval.py"] * 2
    progress = json.loads((work / "progress.json").read_text())
    # both stages follow the 3-step learning-rate curve; only the first has the curriculum's overrides
    assert progress["stage1/full-s0"]["command"].endswith(
        "train.steps=3 optim.schedule_steps=3 data.mix.filler=1.0 train.steps=2")
    assert progress["train/nsa-s0"]["command"].endswith("train.steps=3 optim.schedule_steps=3")
    assert sorted(p.name for p in (work / "runs" / "full-s0" / "checkpoints").iterdir()) == [
        "step_0000002.pt", "step_0000003.pt"]  # the second stage resumed the first in the same run folder
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["train_overrides"] == ["train.steps=3"]
    assert manifest["curriculum"] == {"overrides": ["data.mix.filler=1.0"], "steps": 2}
    assert "- curriculum: the first 2 steps with `data.mix.filler=1.0`" in (out / "REPORT.md").read_text()
    assert run("--curriculum", "data.mix.filler=1.0", "--curriculum-steps", "2")[1] == []  # all done
    with pytest.raises(SystemExit, match="trained with"):  # the curriculum is part of the recipe
        run()


def test_driver_curriculum_errors_and_a_failed_first_stage(driver, monkeypatch, capsys):
    run, work, _ = driver
    with pytest.raises(SystemExit, match="--curriculum and --curriculum-steps go together"):
        run("--curriculum", "data.mix.filler=1.0")
    with pytest.raises(SystemExit, match=r"--curriculum-steps 3 must be between 0 and train.steps \(3\)"):
        run("--curriculum", "data.mix.filler=1.0", "--curriculum-steps", "3")
    monkeypatch.setenv("FAKE_FAIL", "train/full-s0")  # the fake names both stages of full-s0 so
    rc, calls = run("--curriculum", "data.mix.filler=1.0", "--curriculum-steps", "1")
    assert rc == 1 and calls == ["train.py"] * 3 + ["eval.py"]  # full's first stage; nsa's two stages, its eval
    progress = json.loads((work / "progress.json").read_text())
    assert progress["stage1/full-s0"]["status"] == "failed"
    assert progress["train/full-s0"]["status"] == "skipped" and "stage1/full-s0 did not finish" in \
        progress["train/full-s0"]["note"]
    assert progress["train/nsa-s0"]["status"] == "done" and progress["eval/full-s0"]["status"] == "skipped"


def test_driver_help_prints(capsys):
    """--help formats every preset's description (argparse expands % in help texts)."""
    with pytest.raises(SystemExit) as stop:
        _fresh_main(["--help"])
    assert stop.value.code == 0 and "90% of the samples" in capsys.readouterr().out


def test_git_commit_says_when_the_tree_differs_from_head(tmp_path, monkeypatch):
    """The manifest's commit: HEAD's hash, flagged when tracked files differ from it (the GPU machine receives the
    working tree beside an older .git, so the hash alone would name the wrong code)."""
    import subprocess

    spec = importlib.util.spec_from_file_location("reproduce_git", REPO / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce_git", mod)  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    monkeypatch.setattr(mod, "REPO", tmp_path)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert mod.git_commit() == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert mod.git_commit() == f"{head} + uncommitted changes"
    monkeypatch.setattr(mod, "REPO", tmp_path / "nowhere")
    assert mod.git_commit() == "?"


def _fresh_main(argv):
    spec = importlib.util.spec_from_file_location("reproduce_help", REPO / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_help"] = mod
    try:
        spec.loader.exec_module(mod)
        return mod.main(argv)
    finally:
        del sys.modules["reproduce_help"]


def test_driver_report_only_needs_outputs(driver, tmp_path):
    run, work, out = driver
    with pytest.raises(SystemExit, match="holds no reproduction outputs"):
        run("--report-only")
    assert run()[0] == 0
    (out / "REPORT.md").unlink()
    rc, calls = run("--report-only")
    assert rc == 0 and calls == [] and (out / "REPORT.md").is_file()


def test_driver_takes_benchmarks_from_files(driver, tmp_path):
    """--bench-from: the benchmarks' results come from files measured elsewhere (no GPU here), are copied into the
    work folder, recorded as done with where they came from, and kept by later invocations; bad files fail early."""
    run, work, out = driver
    att = REPO / "docs/bench_data/h200_2026-11-28f/attention_callD_tune_main.json"
    dec = REPO / "docs/bench_data/h200_2026-11-28e/decode_call2.json"
    rc, calls = run("--bench-from", f"attention={att}", "--bench-from", f"decode={dec}")
    assert rc == 0 and calls == ["train.py", "train.py", "eval.py", "eval.py"]
    assert json.loads((work / "bench" / "attention.json").read_text()) == json.loads(att.read_text())
    assert json.loads((work / "bench" / "decode.json").read_text()) == json.loads(dec.read_text())
    progress = json.loads((work / "progress.json").read_text())
    for name, src in (("attention", att), ("decode", dec)):
        assert progress[f"bench_{name}"]["status"] == "done" and str(src) in progress[f"bench_{name}"]["note"]
    report = (out / "REPORT.md").read_text()
    assert "(--bench-from): measured outside this run" in report and (out / "kernel_speedup.json").is_file()
    rc, calls = run()  # without the flag: the copies stay recorded as done
    assert rc == 0 and calls == []
    assert json.loads((work / "progress.json").read_text())["bench_decode"]["status"] == "done"
    with pytest.raises(SystemExit, match=r"^error: --bench-from kernels=x: expected NAME=FILE"):
        run("--bench-from", "kernels=x")
    bad = tmp_path / "torn.json"
    bad.write_text('{"main": ')
    with pytest.raises(SystemExit, match=r"^error: --bench-from decode=.*torn.json: not a readable JSON file"):
        run("--bench-from", f"decode={bad}")


# ---------------------------------------------------------------------------------------------------------------
# the driver with --parallel: steps side by side, one per GPU slot

RUNS = [f"{arm}-s{seed}" for seed in (0, 1) for arm in ("full", "nsa")]


def _fake_gpus(monkeypatch, n: int) -> None:
    """torch.cuda as on a host with n GPUs (n = 0: none), for the driver's checks and its benchmark steps."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "FakeGPU")


def _events(monkeypatch, tmp_path):
    """Turns on the fake's start/end log; returns a function that reads it."""
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("FAKE_EVENTS", str(path))
    return lambda: [json.loads(line) for line in path.read_text().splitlines()]


def test_parallel_runs_steps_side_by_side_each_on_its_own_gpu(driver, monkeypatch, tmp_path):
    run, work, out = driver
    _fake_gpus(monkeypatch, 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FAKE_SLEEP", "1")  # each training run takes a second: the four overlap
    monkeypatch.setenv("FAKE_SLOW", "eval/nsa-s1")  # GPU slots are free while it runs: the benchmarks must wait
    events = _events(monkeypatch, tmp_path)
    rc, calls = run("--seeds", "0", "1", "--parallel", "4")
    assert rc == 0 and calls[0] == "prepare"  # the data once, before the trainings that share it
    assert sorted(calls[1:]) == ["eval.py"] * 4 + ["train.py"] * 4
    progress = json.loads((work / "progress.json").read_text())
    runs = [f"{kind}/{r}" for kind in ("train", "eval") for r in RUNS]
    assert {k: v["status"] for k, v in progress.items()} == dict.fromkeys([*runs, "bench_attention", "bench_decode"],
                                                                          "done")
    assert (out / "REPORT.md").is_file() and (work / "bench" / "attention.json").is_file()
    assert json.loads((work / "manifest.json").read_text())["invocations"][-1]["parallel"] == 4

    log = events()
    at = {(e["event"], e["step"]): i for i, e in enumerate(log)}
    assert len(at) == len(log) == 2 * len(progress)  # every step started and ended once
    for r in RUNS:
        assert at["start", f"eval/{r}"] > at["end", f"train/{r}"]
    last_gpu_work = max(at["end", s] for s in runs)
    assert at["start", "bench_attention"] > last_gpu_work and at["start", "bench_decode"] > last_gpu_work
    running, peak = {}, 0
    for e in log:
        assert e["gpu"] == progress[e["step"]]["gpu"]  # the GPU recorded is the one the step saw
        if e["event"] == "start":
            assert e["gpu"] in ("0", "1", "2", "3") and e["gpu"] not in running.values(), (e, running)
            running[e["step"]] = e["gpu"]
            peak = max(peak, len(running))
        else:
            del running[e["step"]]
    assert peak == 4


def test_parallel_curriculum_runs_a_second_stage_only_after_its_first(driver, monkeypatch, tmp_path):
    run, work, _ = driver
    _fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FAKE_SLEEP", "0.5")
    events = _events(monkeypatch, tmp_path)
    rc, calls = run("--parallel", "2", "--curriculum", "data.mix.filler=1.0", "--curriculum-steps", "2")
    assert rc == 0 and sorted(calls[1:]) == ["eval.py"] * 2 + ["train.py"] * 4
    log = events()
    for arm in ("full", "nsa"):  # the fake names both stages train/<run>: they must follow one another
        trains = [e["event"] for e in log if e["step"] == f"train/{arm}-s0"]
        assert trains == ["start", "end", "start", "end"], trains
        last_train_end = max(i for i, e in enumerate(log) if e["step"] == f"train/{arm}-s0")
        assert min(i for i, e in enumerate(log) if e["step"] == f"eval/{arm}-s0") > last_train_end


def test_parallel_failed_training_skips_only_its_eval_on_the_listed_gpus(driver, monkeypatch, tmp_path, capsys):
    run, work, _ = driver
    _fake_gpus(monkeypatch, 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # slot i runs on the i-th GPU listed
    monkeypatch.setenv("FAKE_FAIL", "train/nsa-s0")
    events = _events(monkeypatch, tmp_path)
    rc, calls = run("--seeds", "0", "1", "--parallel", "2")
    assert rc == 1 and sorted(calls) == ["eval.py"] * 3 + ["prepare"] + ["train.py"] * 4
    progress = json.loads((work / "progress.json").read_text())
    status = {k: v["status"] for k, v in progress.items()}
    assert status.pop("train/nsa-s0") == "failed" and status.pop("eval/nsa-s0") == "skipped"
    assert status == {**{f"{kind}/{r}": "done" for kind in ("train", "eval") for r in RUNS if r != "nsa-s0"},
                      "bench_attention": "skipped", "bench_decode": "skipped"}
    assert re.fullmatch(r"skipped: .*nsa-s0 has no checkpoint of step 3 \(training failed\)",
                        progress["eval/nsa-s0"]["note"])
    assert "gpu" not in progress["eval/nsa-s0"]
    assert {v["gpu"] for v in progress.values() if v["status"] != "skipped"} == {"5", "7"}
    assert {e["gpu"] for e in events()} == {"5", "7"} and "eval/nsa-s0" not in {e["step"] for e in events()}
    assert "train/nsa-s0 FAILED (exit 1)" in capsys.readouterr().out


def test_parallel_stops_at_the_time_budget_and_continues(driver, monkeypatch):
    run, work, _ = driver
    _fake_gpus(monkeypatch, 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FAKE_SLEEP", "60")
    rc, calls = run("--parallel", "2", "--time-budget", "5", "--reserve", "1")
    assert rc == 3 and calls == ["prepare", "train.py", "train.py"]  # both runs stopped; their evals never started
    progress = json.loads((work / "progress.json").read_text())
    assert {k: (v["status"], v["gpu"]) for k, v in progress.items()} == {
        "train/full-s0": ("stopped", "0"), "train/nsa-s0": ("stopped", "1")}
    monkeypatch.setenv("FAKE_SLEEP", "0")
    rc, calls = run("--parallel", "2")
    assert rc == 0 and sorted(calls) == ["eval.py", "eval.py", "prepare", "train.py", "train.py"]


def test_parallel_refuses_bad_arguments(driver, monkeypatch):
    run, work, _ = driver
    _fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for args, message in [
        (["--parallel", "2", "--nproc-per-node", "2"],
         r"error: --parallel 2 x 2 GPU\(s\) per step but only 2 CUDA GPU\(s\) are visible: pass --parallel 1 or "
         r"fewer \(or a smaller --nproc-per-node\)"),
        (["--parallel", "0"], r"error: --parallel 0: pass 1 \(one step after another\) or more"),
        (["--parallel", "4"],
         r"error: --parallel 4 x 1 GPU\(s\) per step but only 2 CUDA GPU\(s\) are visible: pass --parallel 2 or fewer"),
    ]:
        with pytest.raises(SystemExit) as e:
            run(*args)
        assert re.fullmatch(message, str(e.value)), str(e.value)
    _fake_gpus(monkeypatch, 0)  # no CUDA: the number of GPUs listed still bounds the slots
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(SystemExit, match=r"^error: --parallel 2 needs 2 GPUs but CUDA_VISIBLE_DEVICES='3' lists 1: "
                                         r"pass --parallel 1 or list more GPUs$"):
        run("--parallel", "2")
    assert not work.exists()  # refused before anything ran


def test_parallel_gives_a_torchrun_training_a_group_of_gpus(driver, monkeypatch, tmp_path):
    run, work, _ = driver
    _fake_gpus(monkeypatch, 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FAKE_SLEEP", "1")  # the two trainings overlap
    events = _events(monkeypatch, tmp_path)
    rc, calls = run("--parallel", "2", "--nproc-per-node", "2")
    assert rc == 0 and sorted(calls) == ["eval.py", "eval.py", "prepare", "train.py", "train.py"]
    starts = {e["step"]: e["gpu"] for e in events() if e["event"] == "start"}
    assert {starts["train/full-s0"], starts["train/nsa-s0"]} == {"0,1", "2,3"}  # two GPUs each, no overlap
    assert all(g in ("0,1", "2,3") for g in starts.values())


def test_needle_selection_names_the_seeds_it_covers():
    """Seeds evaluated before the diagnostic existed add nothing to it, and the report says which seeds it covers
    (the gpu-small report's diagnostic came from one seed of four)."""
    from evaluation.compare import _needle_selection
    from evaluation.compare_report import _diagnosed_seeds

    def row(length, correct, selected=None):
        r = {"length": length, "correct": correct}
        if selected is not None:
            r.update(needle_selected=selected, needle_in_window=False, gate_slc=0.1, gate_win=0.3)
        return r

    rows = {0: [row(64, True), row(64, False)], 3: [row(64, True, 1.0), row(64, False, 0.0), row(128, True, 1.0)]}
    sel = _needle_selection(rows, train_length=64)
    assert sel["seeds"] == [3] and sel["within"]["n"] == 2 and sel["by_length"]["128"]["n"] == 1
    assert sel["within"]["accuracy_found"] == 1.0 and sel["within"]["accuracy_missed"] == 0.0
    assert _diagnosed_seeds({"seeds": [0, 3], "nsa_selection": sel}).startswith(" (seed 3 only")
    assert _diagnosed_seeds({"seeds": [3], "nsa_selection": sel}) == ""
    assert _needle_selection({0: rows[0]}, train_length=64) is None
