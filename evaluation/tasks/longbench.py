"""`longbench`: LongBench (v1) predictions with greedy decoding, then LongBench's own scoring.

Per task: read <task>.jsonl (or <task>_e.jsonl with longbench.e) from longbench.data_dir, fill LongBench's
prompt template, truncate the prompt in the middle to the budget (eval.max_length - the task's max generation
length, or longbench.max_length) or skip it (longbench.overflow=skip; counted), generate greedily up to the
task's max generation length (samsum also stops at a newline, but not as its first token, as LongBench does),
and append each prediction to OUT/longbench/pred/<task>.jsonl at once (a crash loses nothing; a rerun resumes
after the lines already there). Scores go to OUT/longbench/result.json (LongBench's layout and 0-100 scale)
and to results.json with sample counts and the LongBench-E length buckets. Offline tasks (longbench.local)
run without any data_dir.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from evaluation import longbench as lb
from evaluation.loading import EvalError
from evaluation.report import write_json_atomic
from evaluation.tasks.common import EvalContext, log, mean


def _task_list(ctx: EvalContext, data_dir: Path | None) -> list[str]:
    c = ctx.cfg.longbench
    if c.tasks is not None:
        for t in c.tasks:
            lb.base_task(t)  # unknown names fail here, listing the known ones
        tasks = list(c.tasks)
    else:
        tasks = lb.discover_tasks(data_dir, c.e) if data_dir else []
        tasks += list(lb.LOCAL_TASKS) if c.local else []
    if not tasks:
        raise EvalError("longbench has no task to run: set longbench.data_dir to LongBench's data folder, "
                        "longbench.tasks, or longbench.local=true")
    if any(t not in lb.LOCAL_TASKS for t in tasks) and data_dir is None:
        raise EvalError("longbench.tasks names LongBench tasks but longbench.data_dir is not set: point it to "
                        "the folder of LongBench's <task>.jsonl files")
    return tasks


def _predict_task(ctx: EvalContext, task: str, data_file: Path, pred_file: Path) -> dict[str, int]:
    c = ctx.cfg.longbench
    base = lb.base_task(task)
    max_gen = lb.task_table()[base]["max_gen"]
    budget = c.max_length or ctx.max_length - max_gen
    if budget <= 0:
        raise EvalError(f"{task}: eval.max_length={ctx.max_length} leaves no room for a prompt before the "
                        f"{max_gen} generated tokens: raise eval.max_length or set longbench.max_length")
    samples = lb.read_jsonl(data_file, lb.SAMPLE_FIELDS, c.max_samples)
    if not c.resume and pred_file.exists():
        pred_file.unlink()
    previous = lb.read_jsonl(pred_file, lb.PRED_FIELDS) if pred_file.is_file() else []
    # resume: samples already predicted are recognised by their _id (LongBench's), else by their count
    done_ids = {r["_id"] for r in previous if "_id" in r}
    todo = [s for i, s in enumerate(samples) if (s["_id"] not in done_ids if "_id" in s else i >= len(previous))]
    stop = [ctx.tok.eos_id]
    min_new = 0
    if base == "samsum":  # LongBench: newline also ends the answer, but the answer has at least one token
        stop.append(ctx.tok.encode("\n")[-1])
        min_new = 1
    counts = {"samples": len(samples), "resumed": len(samples) - len(todo), "truncated": 0, "skipped_too_long": 0}
    with open(pred_file, "a", encoding="utf-8") as f:
        for sample in tqdm(todo, desc=f"longbench {task}", leave=False):
            ids = ctx.tok.encode(lb.build_prompt(task, sample))
            if len(ids) > budget:
                if c.overflow == "skip":
                    counts["skipped_too_long"] += 1
                    continue
                ids = lb.middle_truncate(ctx.tok, ids, budget)
                counts["truncated"] += 1
            (gen,) = ctx.generate([ids], max_gen, stop_ids=stop, min_new_tokens=min_new)
            row = {"pred": ctx.tok.decode(gen), "answers": sample["answers"],
                   "all_classes": sample.get("all_classes"), "length": sample.get("length")}
            if "_id" in sample:
                row["_id"] = sample["_id"]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return counts


def run_longbench(ctx: EvalContext) -> dict[str, Any]:
    c = ctx.cfg.longbench
    data_dir = Path(c.data_dir).expanduser() if c.data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise EvalError(f"longbench.data_dir={c.data_dir} is not a folder (LongBench's <task>.jsonl files)")
    tasks = _task_list(ctx, data_dir)
    root = ctx.task_dir("longbench")
    pred_dir = root / "pred"
    pred_dir.mkdir(exist_ok=True)
    local = [t for t in tasks if t in lb.LOCAL_TASKS]
    if local:
        budgets = {t: c.max_length or ctx.max_length - lb.task_table()[lb.base_task(t)]["max_gen"]
                   for t in lb.LOCAL_TASKS}
        lb.write_local_tasks(root / "data", ctx.tok, c.local_samples, budgets, ctx.cfg.seed)
    result: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for task in tasks:
        src = lb.task_file(root / "data", task, False) if task in lb.LOCAL_TASKS else lb.task_file(data_dir, task, c.e)
        pred_file = pred_dir / f"{task}.jsonl"
        counts = _predict_task(ctx, task, src, pred_file)
        if not lb.read_jsonl(pred_file, lb.PRED_FIELDS):  # every sample skipped
            result[task], metrics[task] = None, None
            metrics[f"{task}/skipped_too_long"] = counts["skipped_too_long"]
            write_json_atomic(root / "result.json", result)
            continue
        _, score, extras = lb.score_file(pred_file, c.e)
        result[task] = score
        write_json_atomic(root / "result.json", result)  # after every task: nothing finished is lost
        metrics[task] = score if not c.e else mean([v for v in score.values() if v is not None])
        for key, v in {**counts, **{k: v for k, v in extras.items() if k != "samples"}}.items():
            if key not in ("resumed",) and v is not None:
                metrics[f"{task}/{key}"] = v
        if counts["skipped_too_long"]:
            log.warning(f"longbench {task}: {counts['skipped_too_long']} samples longer than the budget skipped")
    lb_tasks = [metrics[t] for t in tasks if t not in lb.LOCAL_TASKS and metrics.get(t) is not None]
    return {"average": mean(lb_tasks), "local_average": mean([metrics[t] for t in local]), **metrics}
