"""eval end to end on a tiny checkpoint trained here: every task writes its outputs, consistently; LongBench
predictions re-score to the same numbers; planted predictions score as computed by hand; bad input fails
with the promised one-line errors and never loses finished results."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.config import EvalConfig, register_configs, to_eval_config
from evaluation.loading import EvalError
from evaluation.runner import evaluate
from tests.conftest import REPO, compose_config
from training.trainer import train

TREC = ["Abbreviation", "Entity", "Description", "Human", "Location", "Numeric"]


def eval_config(overrides: list[str]) -> EvalConfig:
    """configs/eval.yaml with overrides, as eval.py would see it."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return to_eval_config(compose(config_name="eval", overrides=overrides))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_overrides) -> Path:
    """A tiny model trained for 2 steps at 128 tokens (untrained in effect: accuracies are ~0)."""
    run = tmp_path_factory.mktemp("eval_run")
    train(compose_config([f"run_dir={run}", *data_overrides, "model.max_seq_len=128", "train.steps=2",
                          "train.micro_batch_size=4", "train.batch_tokens=512", "train.val_interval=0",
                          "optim.warmup_steps=1", "train.device=cpu"]))
    return run


@pytest.fixture(scope="module")
def longbench_dir(tmp_path_factory) -> Path:
    """A few samples in LongBench's format (one far over the prompt budget: it gets truncated)."""
    d = tmp_path_factory.mktemp("longbench_data")
    ctx = "Paris is the capital of France. " * 8
    write_jsonl(d / "hotpotqa.jsonl", [
        {"input": "What is the capital of France?", "context": ctx, "answers": ["Paris"], "length": 48,
         "all_classes": None, "_id": "h1"},
        {"input": "Which city?", "context": "The city is Rome. " * 400, "answers": ["Rome"], "length": 1600,
         "all_classes": None, "_id": "h2"},
    ])
    write_jsonl(d / "trec.jsonl", [{"input": "Question: Who wrote Hamlet?\nType:",
                                    "context": "Question: What is DNA?\nType: Abbreviation", "answers": ["Human"],
                                    "length": 9, "all_classes": TREC, "_id": "t1"}])
    write_jsonl(d / "samsum.jsonl", [{"input": "Dialogue: A: hi\nB: hello\nSummary:",
                                      "context": "Dialogue: A: bye\nSummary: A leaves.", "answers": ["They greet."],
                                      "length": 12, "all_classes": None, "_id": "s1"}])
    return d


GRIDS = [
    "eval.max_length=768", "eval.batch_size=4",
    "ppl_position.samples=2", "ppl_position.buckets=4",
    "passkey.lengths=[96,128]", "passkey.depths=[0,100]", "passkey.samples=1",
    "niah.lengths=[128,160]", "niah.depths=[0,50,100]", "niah.samples=1",
    "ruler.lengths=[320,768]", "ruler.samples=1", "ruler.max_new_tokens=6",
    "mqar.lengths=[128,256]", "mqar.samples=2",
    "longbench.local_samples=1",
]


@pytest.fixture(scope="module")
def full_eval(run_dir, longbench_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    tasks = "tasks=[ppl_position,passkey,niah,ruler,mqar,longbench]"
    results = evaluate(eval_config([f"checkpoint={run_dir}", f"out_dir={out}", tasks,
                                    f"longbench.data_dir={longbench_dir}", *GRIDS]))
    return out, results


def test_every_task_writes_its_outputs(full_eval, run_dir):
    out, results = full_eval
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in ("model", "checkpoint", "step", "sparsity", "seed", "max_length", "throughput"):
        assert key in on_disk
    assert on_disk["checkpoint"].endswith("step_0000002.pt") and on_disk["step"] == 2
    assert on_disk["sparsity"]["128"]["fraction"] == pytest.approx(1.0)  # full attention sees every key
    assert on_disk["throughput"]["prefill_tok_s"] > 0 and on_disk["throughput"]["decode_tok_s"] > 0
    summary = (out / "summary.md").read_text()
    for task in ("ppl_position", "passkey", "niah", "ruler", "mqar", "longbench"):
        assert "error" not in on_disk[task], on_disk[task]
        assert f"## {task}" in summary
    for f in ("ppl_position/loss_by_position.png", "ppl_position/loss_by_position.json", "passkey/heatmap.png",
              "niah/heatmap.png", "niah/grid.md", "ruler/predictions.jsonl", "mqar/predictions.jsonl",
              "longbench/result.json"):
        assert (out / f).is_file(), f
    assert (out / "niah" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_and_ppl_outputs_are_consistent(full_eval):
    out, results = full_eval
    ppl = results["ppl_position"]
    curve = json.loads((out / "ppl_position" / "loss_by_position.json").read_text())
    assert len(curve["loss_by_position"]) == 768 and ppl["windows"] == 2
    assert ppl["loss"] == pytest.approx(sum(curve["loss_by_position"]) / 768)
    assert [k for k in ppl if k.startswith("loss@")] == ["loss@0-192", "loss@192-384", "loss@384-576",
                                                          "loss@576-768"]
    for task, depths, lengths in (("passkey", [0, 100], [96, 128]), ("niah", [0, 50, 100], [128, 160])):
        grid = json.loads((out / task / "grid.json").read_text())
        assert grid["depths"] == depths and grid["lengths"] == lengths
        cells = [v for row in grid["accuracy"] for v in row]
        assert len(cells) == len(depths) * len(lengths) and all(0 <= v <= 1 for v in cells)
        assert results[task]["accuracy"] == pytest.approx(sum(cells) / len(cells))
        preds = [json.loads(x) for x in (out / task / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == len(cells) == results[task]["samples"]
        assert all(p["correct"] == (p["expected"] in p["pred"]) for p in preds)
    assert results["niah"]["haystack"] in ("essays", "corpus")
    ruler = results["ruler"]
    assert ruler["skipped_cells"] >= 1 and "cwe@768" in ruler and "cwe@320" not in ruler  # cwe needs ~700
    assert all(0 <= ruler[k] <= 100 for k in ruler if "@" in k)
    assert 0 <= results["mqar"]["accuracy"] <= 1 and "accuracy@256" in results["mqar"]


def test_longbench_layout_and_rescoring(full_eval, tmp_path):
    out, results = full_eval
    lb_res = results["longbench"]
    result = json.loads((out / "longbench" / "result.json").read_text())
    tasks = ["hotpotqa", "samsum", "trec", "local_passage_retrieval", "local_passage_count", "local_lcc"]
    assert set(result) == set(tasks)
    for task in tasks:
        rows = [json.loads(x) for x in (out / "longbench" / "pred" / f"{task}.jsonl").read_text().splitlines()]
        assert rows and all(set(r) >= {"pred", "answers", "all_classes", "length"} for r in rows)
        assert lb_res[task] == result[task] and 0 <= result[task] <= 100
    assert lb_res["hotpotqa/samples"] == 2 and lb_res["hotpotqa/truncated"] == 1  # the 1600-word sample
    assert (out / "longbench" / "data" / "local_lcc.jsonl").is_file()
    # LongBench's eval on the same predictions: identical scores
    copy = tmp_path / "pred"
    shutil.copytree(out / "longbench" / "pred", copy)
    rescored = evaluate(eval_config(["tasks=[longbench]", f"longbench.score_only={copy}"]))["longbench"]
    assert rescored == result == json.loads((copy / "result.json").read_text())


def test_resume_and_side_by_side(full_eval, run_dir, longbench_dir, tmp_path):
    out, results = full_eval
    pred = out / "longbench" / "pred" / "hotpotqa.jsonl"
    before = pred.read_text()
    again = evaluate(eval_config([f"checkpoint={run_dir}", f"out_dir={out}", "tasks=[longbench]",
                                  f"longbench.data_dir={longbench_dir}", "longbench.tasks=[hotpotqa]",
                                  "eval.max_length=768"]))
    assert pred.read_text() == before  # nothing predicted twice
    assert again["longbench"]["hotpotqa"] == results["longbench"]["hotpotqa"]
    other = tmp_path / "other"
    evaluate(eval_config([f"checkpoint={run_dir}", f"out_dir={other}", "tasks=[niah]", "niah.lengths=[128]",
                          "niah.depths=[0,100]", "niah.samples=1", f"niah.compare_to={out}"]))
    assert (other / "niah" / "heatmap_side_by_side.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture()
def planted(tmp_path) -> Path:
    """Predictions with known scores (computed by hand in the test below)."""
    d = tmp_path / "pred"
    d.mkdir()
    write_jsonl(d / "hotpotqa.jsonl", [
        {"pred": "Paris", "answers": ["Paris"], "all_classes": None, "length": 100},  # 1
        {"pred": "the big apple", "answers": ["apple", "pear"], "all_classes": None, "length": 5000},  # 2/3
    ])
    write_jsonl(d / "trec.jsonl", [
        {"pred": "Entity\nHuman", "answers": ["Entity"], "all_classes": TREC, "length": 10},  # first line: 1
        {"pred": "Human or Location", "answers": ["Location"], "all_classes": TREC, "length": 10},  # 1/2
    ])
    write_jsonl(d / "passage_retrieval_en.jsonl", [
        {"pred": "Paragraph 2", "answers": ["Paragraph 2"], "all_classes": None, "length": 9000},  # 1
        {"pred": "Paragraph 1 or Paragraph 2", "answers": ["Paragraph 1"], "all_classes": None, "length": 9000},
    ])
    write_jsonl(d / "lcc.jsonl", [{"pred": "\n    return x\n", "answers": ["    return x"], "all_classes": None,
                                   "length": 30}])
    write_jsonl(d / "local_passage_count.jsonl", [{"pred": "3", "answers": ["3"], "all_classes": None,
                                                   "length": 30}])
    return d


def test_score_only_planted_predictions(planted):
    res = evaluate(eval_config(["tasks=[longbench]", f"longbench.score_only={planted}"]))["longbench"]
    expected = {"hotpotqa": 83.33, "trec": 75.0, "passage_retrieval_en": 75.0, "lcc": 100.0,
                "local_passage_count": 100.0}
    assert res == expected
    assert json.loads((planted / "result.json").read_text()) == expected
    e = evaluate(eval_config(["tasks=[longbench]", f"longbench.score_only={planted}", "longbench.e=true"]))
    assert e["longbench"]["hotpotqa"] == {"0-4k": 100.0, "4-8k": 66.67, "8k+": None}
    assert e["longbench"]["passage_retrieval_en"] == {"0-4k": None, "4-8k": None, "8k+": 75.0}


def test_cli_score_only_and_unknown_task(planted):
    run = lambda *args: subprocess.run([sys.executable, str(REPO / "eval.py"), *args], capture_output=True,
                                       text=True, cwd=planted, timeout=120)
    ok = run("tasks=[longbench]", f"longbench.score_only={planted}")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((planted / "result.json").read_text())["trec"] == 75.0
    bad = run("tasks=[niah,nope]", "checkpoint=x")
    assert bad.returncode == 1
    assert "unknown task(s) ['nope']" in bad.stderr and "longbench" in bad.stderr and "passkey" in bad.stderr


def test_bad_prediction_files(planted):
    (planted / "hotpotqa.jsonl").write_text('{"pred": "x", "answers": ["x"]}\n{"pred": "y", "answers": \n')
    with pytest.raises(EvalError, match=r"hotpotqa\.jsonl:2: malformed JSON"):
        evaluate(eval_config(["tasks=[longbench]", f"longbench.score_only={planted}"]))
    (planted / "hotpotqa.jsonl").write_text('{"pred": "x"}\n')
    with pytest.raises(EvalError, match=r"hotpotqa\.jsonl:1: missing field\(s\) \['answers'\]"):
        evaluate(eval_config(["tasks=[longbench]", f"longbench.score_only={planted}"]))
    (planted / "hotpotqa.jsonl").unlink()
    write_jsonl(planted / "nonsense.jsonl", [{"pred": "x", "answers": ["x"]}])
    with pytest.raises(EvalError, match="'nonsense' is not a LongBench task: choose from .*hotpotqa"):
        evaluate(eval_config(["tasks=[longbench]", f"longbench.score_only={planted}"]))


def test_missing_checkpoint_and_unknown_task(tmp_path):
    with pytest.raises(EvalError, match="no checkpoint in .*checkpoints"):
        evaluate(eval_config([f"checkpoint={tmp_path}", "tasks=[passkey]", f"out_dir={tmp_path}/o"]))
    with pytest.raises(EvalError, match="does not exist"):
        evaluate(eval_config([f"checkpoint={tmp_path}/nope", "tasks=[passkey]", f"out_dir={tmp_path}/o"]))
    with pytest.raises(EvalError, match=r"unknown task\(s\) \['pasky'\].*choose from .*'passkey'"):
        evaluate(eval_config(["tasks=[pasky]"]))
    with pytest.raises(EvalError, match="longbench.overflow='cut'"):
        evaluate(eval_config(["tasks=[longbench]", "longbench.overflow=cut"]))


def test_bad_data_file_keeps_other_results(run_dir, longbench_dir, tmp_path):
    bad = tmp_path / "lb"
    shutil.copytree(longbench_dir, bad)
    with open(bad / "hotpotqa.jsonl", "a") as f:
        f.write("{not json\n")
    huge = {"input": "Q?", "context": "word " * 3000, "answers": ["a"], "length": 3000, "_id": "big"}
    write_jsonl(bad / "trec.jsonl", [huge | {"all_classes": TREC}])
    out = tmp_path / "out"
    with pytest.raises(EvalError, match=r"task\(s\) \['longbench'\] failed"):
        evaluate(eval_config([f"checkpoint={run_dir}", f"out_dir={out}", "tasks=[passkey,longbench]",
                              "passkey.lengths=[96]", "passkey.depths=[50]", "passkey.samples=1",
                              f"longbench.data_dir={bad}", "longbench.tasks=[trec,hotpotqa]",
                              "longbench.overflow=skip", "eval.max_length=512"]))
    saved = json.loads((out / "results.json").read_text())
    assert saved["passkey"]["samples"] == 1  # finished before the failure: kept
    assert "hotpotqa.jsonl:3: malformed JSON" in saved["longbench"]["error"]
    assert json.loads((out / "longbench" / "result.json").read_text()) == {"trec": None}  # skipped: too long


def test_nsa_checkpoint_through_the_gpt_interface(run_dir, tmp_path):
    """Any registered attention evaluates: an NSA checkpoint (fresh weights, the run's data) on cached decoding
    and teacher-forced tasks, with its sparsity reported."""
    import dataclasses

    import torch

    from model import GPT, AttentionConfig, ModelConfig
    from training import checkpoint as ckpt_io

    ckpt = ckpt_io.load_checkpoint(ckpt_io.list_checkpoints(run_dir)[-1])
    attn = AttentionConfig(name="nsa", compress_block=8, compress_stride=8, select_block=8, num_select=4, window=16)
    config = {**ckpt["config"], "attention": dataclasses.asdict(attn)}
    torch.manual_seed(0)
    model = GPT(ModelConfig(**config["model"]), attn)
    nsa_run = tmp_path / "nsa_run"
    ckpt_io.save_checkpoint(nsa_run, 1, {"model": model.state_dict(), "config": config, "step": 1, "tokens": 0},
                            keep_last=1)
    out = tmp_path / "out"
    res = evaluate(eval_config([f"checkpoint={nsa_run}", f"out_dir={out}", "tasks=[ppl_position,passkey,mqar]",
                                "ppl_position.samples=1", "passkey.lengths=[128]", "passkey.depths=[50]",
                                "passkey.samples=2", "passkey.max_new_tokens=3", "mqar.lengths=[128]",
                                "mqar.samples=2"]))
    assert res["model"]["attention"] == "nsa"
    assert 0 < res["sparsity"]["128"]["fraction"] < 1  # NSA attends to fewer keys than full attention
    measured = res["sparsity"]["128"]["measured"]  # one forward of held-out text: what NSA really selected
    assert measured["total"] == pytest.approx(res["sparsity"]["128"]["keys_per_query"]["total"], rel=1e-9)
    assert measured["slc_blocks"] / 4 <= measured["slc_blocks_shared4"] <= measured["slc_blocks"]
    assert res["passkey"]["samples"] == 2 and res["mqar"]["values"] > 0 and res["ppl_position"]["loss"] > 0
    assert (out / "passkey" / "heatmap.png").is_file()
    # did the selection find the needle: every prediction says, and the metric averages the far ones
    rows = [json.loads(line) for line in (out / "passkey" / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        assert 0 <= r["needle_selected"] <= 1 and 0 < r["gate_slc"] < 1 and 0 < r["gate_win"] < 1
        assert r["needle_in_window"] is False  # depth 50% of 128 tokens: far outside a 16-token window
    assert res["passkey"]["needle_selected@128"] == pytest.approx(sum(r["needle_selected"] for r in rows) / 2)
