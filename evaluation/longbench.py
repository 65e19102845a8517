"""LongBench (v1): task table, JSONL reading, prompts, middle truncation, offline tasks, scoring of a pred folder.

Layout (LongBench's own): predictions `PRED_DIR/<task>.jsonl`, one line per sample
`{"pred", "answers", "all_classes", "length"}`, and `PRED_DIR/result.json` = `{task: score}` on the 0-100 scale
(with LongBench-E: `{task: {"0-4k": s, "4-8k": s, "8k+": s}}`).

Offline tasks in LongBench's exact format, so the whole path runs without downloads (and in CI); each is
scored like, and prompted with the template of, the LongBench task it imitates:
- local_passage_retrieval (as passage_retrieval_en): "Paragraph i: ..." paragraphs of stdlib docstring prose;
  the "abstract" is the first sentence of one of them; answer "Paragraph i".
- local_passage_count (as passage_count): paragraphs, some repeated, shuffled; answer = number of distinct ones.
- local_lcc (as lcc): a stdlib Python file up to some line; answer = that next line.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from common.files import write_text_atomic
from data.tokenizer import Tokenizer
from evaluation.loading import EvalError
from evaluation.metrics import TASK_METRIC, longbench_e_scores, longbench_score
from evaluation.report import write_json_atomic
from evaluation.text_sources import docstring_paragraphs, stdlib_python_files

TASKS_FILE = Path(__file__).with_name("longbench_tasks.yaml")
LOCAL_TASKS = {"local_passage_retrieval": "passage_retrieval_en", "local_passage_count": "passage_count",
               "local_lcc": "lcc"}
SAMPLE_FIELDS = ("input", "context", "answers")
PRED_FIELDS = ("pred", "answers")


@lru_cache(maxsize=1)
def task_table() -> dict[str, dict[str, Any]]:
    """{LongBench task: {"prompt": template, "max_gen": tokens}} from longbench_tasks.yaml."""
    table = yaml.safe_load(TASKS_FILE.read_text(encoding="utf-8"))
    missing = set(TASK_METRIC) ^ set(table)
    if missing:
        raise RuntimeError(f"{TASKS_FILE} and evaluation.metrics.TASK_METRIC disagree on tasks {sorted(missing)}")
    return table


def known_tasks() -> list[str]:
    return [*task_table(), *LOCAL_TASKS]


def base_task(task: str) -> str:
    """The LongBench task whose prompt, generation length and metric `task` uses."""
    name = LOCAL_TASKS.get(task, task)
    if name not in task_table():
        raise EvalError(f"{task!r} is not a LongBench task: choose from {known_tasks()}")
    return name


def read_jsonl(path: Path, required: Sequence[str], max_rows: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a malformed line or a missing field raises EvalError naming file and line."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if max_rows is not None and len(rows) >= max_rows:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}): fix or delete "
                                "that line") from None
            if not isinstance(row, dict):
                raise EvalError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise EvalError(f"{path}:{lineno}: missing field(s) {missing} (a LongBench line has "
                                f"{list(required)})")
            if "answers" in required and not isinstance(row["answers"], list):
                raise EvalError(f"{path}:{lineno}: 'answers' must be a list of strings")
            rows.append(row)
    return rows


def build_prompt(task: str, sample: dict[str, Any]) -> str:
    """LongBench's template of the task filled with the sample's fields (no chat template: base models)."""
    try:
        return task_table()[base_task(task)]["prompt"].format(**sample)
    except KeyError as e:
        raise EvalError(f"{task}: sample {sample.get('_id', '?')} lacks field {e} that the prompt uses") from None


def middle_truncate(tok: Tokenizer, ids: list[int], max_len: int) -> list[int]:
    """LongBench's truncation: keep the first and last max_len // 2 tokens, decode both halves, join the text
    and encode it again (so the result can differ from max_len by a token or two, as in LongBench)."""
    if len(ids) <= max_len:
        return ids
    half = max_len // 2
    return tok.encode(tok.decode(ids[:half]) + tok.decode(ids[-half:]))


def task_file(data_dir: Path, task: str, e: bool) -> Path:
    path = Path(data_dir) / f"{task}{'_e' if e else ''}.jsonl"
    if not path.is_file():
        raise EvalError(f"{path} not found: put LongBench's {path.name} in longbench.data_dir or drop {task} "
                        "from longbench.tasks")
    return path


def discover_tasks(data_dir: Path, e: bool) -> list[str]:
    """LongBench tasks that have a data file in data_dir (in LongBench's task order)."""
    return [t for t in task_table() if (Path(data_dir) / f"{t}{'_e' if e else ''}.jsonl").is_file()]


# ---------------------------------------------------------------------------------------------------------
# scoring a folder of predictions (LongBench's eval.py)

def score_file(path: Path, e: bool = False) -> tuple[str, float | dict[str, float | None], dict[str, Any]]:
    """(task, LongBench score or LongBench-E buckets, extras) of one <task>.jsonl prediction file.

    As LongBench, one all_classes serves the whole file: the last line's. extras: samples and the E buckets."""
    task = path.stem
    base = base_task(task)
    rows = read_jsonl(path, PRED_FIELDS)
    if not rows:
        raise EvalError(f"{path} holds no prediction: delete it or run the task again")
    preds = [str(r["pred"]) for r in rows]
    answers = [r["answers"] for r in rows]
    all_classes = rows[-1].get("all_classes")
    extras: dict[str, Any] = {"samples": len(rows)}
    lengths = [r.get("length") for r in rows]
    buckets = None
    if all(isinstance(n, int | float) for n in lengths):
        buckets = longbench_e_scores(base, preds, answers, lengths, all_classes)
        extras.update(buckets)
    elif e:
        raise EvalError(f"{path}: LongBench-E scoring needs a numeric 'length' on every line")
    score = buckets if e else longbench_score(base, preds, answers, all_classes)
    return task, score, extras


def score_dir(pred_dir: Path, e: bool = False) -> dict[str, Any]:
    """Score every <task>.jsonl in pred_dir and write pred_dir/result.json (LongBench's layout); return it."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvalError(f"longbench.score_only={pred_dir} is not a folder of <task>.jsonl predictions")
    files = sorted(pred_dir.glob("*.jsonl"))
    if not files:
        raise EvalError(f"{pred_dir} holds no <task>.jsonl prediction file")
    result = {}
    for f in files:
        task, score, _ = score_file(f, e)
        result[task] = score
    write_json_atomic(pred_dir / "result.json", result)
    return result


# ---------------------------------------------------------------------------------------------------------
# offline tasks in LongBench's format

def _row(task: str, i: int, context: str, inp: str, answer: str) -> dict[str, Any]:
    return {"input": inp, "context": context, "answers": [answer], "length": len(context.split()),
            "dataset": task, "language": "en", "all_classes": None, "_id": f"{task}-{i}"}


def _fit_paragraphs(tok: Tokenizer, task: str, paras: list[str], budget: int, max_n: int,
                    inp: str = "") -> int:
    """How many of `paras` (numbered) fit the prompt budget; at least 2."""
    overhead = len(tok.encode(build_prompt(task, {"context": "", "input": inp})))
    used, n = overhead, 0
    for p in paras[:max_n]:
        used += len(tok.encode(f"Paragraph {n + 1}: {p}\n\n"))
        if used > budget and n >= 2:
            break
        n += 1
    return max(n, 2)


def _numbered(paras: Sequence[str]) -> str:
    return "\n\n".join(f"Paragraph {i + 1}: {p}" for i, p in enumerate(paras))


def make_local_task(task: str, tok: Tokenizer, n_samples: int, budget: int, seed: int) -> list[dict[str, Any]]:
    """n_samples rows of an offline task, each prompt sized to about `budget` tokens."""
    rng = random.Random(f"{task}-{seed}")
    if task == "local_lcc":
        return _local_lcc(tok, n_samples, budget, rng)
    pool = list(docstring_paragraphs(max(60, 8 * n_samples)))
    rows = []
    for i in range(n_samples):
        rng.shuffle(pool)
        if task == "local_passage_retrieval":
            first = lambda p: re.split(r"(?<=[.!?])\s", p, maxsplit=1)[0]
            n = _fit_paragraphs(tok, task, pool, budget, 30, inp=first(pool[0]))
            paras = pool[:n]
            target = rng.randrange(n)
            rows.append(_row(task, i, _numbered(paras), first(paras[target]), f"Paragraph {target + 1}"))
        elif task == "local_passage_count":
            n = _fit_paragraphs(tok, task, pool, budget, 30)
            unique = rng.randint(1, max(1, n - 1))
            paras = pool[:unique] + [rng.choice(pool[:unique]) for _ in range(n - unique)]
            rng.shuffle(paras)
            # repeats of long paragraphs can overshoot the budget: drop entries from the end while they do
            while len(paras) > 2 and len(tok.encode(build_prompt(task, {"context": _numbered(paras)}))) > budget:
                paras.pop()
            rows.append(_row(task, i, _numbered(paras), "", str(len(set(paras)))))
        else:
            raise EvalError(f"unknown local task {task!r}: choose from {list(LOCAL_TASKS)}")
    return rows


def _scorable(line: str) -> bool:
    """A next line worth predicting: code (not blank, not a comment or marker LongBench's scorer skips)."""
    s = line.strip()
    return len(s) >= 8 and not any(m in line for m in ("`", "#", "//"))


def _local_lcc(tok: Tokenizer, n_samples: int, budget: int, rng: random.Random) -> list[dict[str, Any]]:
    overhead = len(tok.encode(build_prompt("local_lcc", {"context": "", "input": ""})))
    files = list(stdlib_python_files())
    rng.shuffle(files)
    rows: list[dict[str, Any]] = []
    for path in files:
        if len(rows) == n_samples:
            break
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        used, candidates = overhead, []
        for k, line in enumerate(lines):
            if k >= 1 and _scorable(line) and (used <= budget or not candidates):
                candidates.append(k)  # past the budget only if nothing fits (the prompt is then truncated)
            used += len(tok.encode(line + "\n"))
            if used > budget and candidates:
                break
        if not candidates:
            continue
        k = rng.choice(candidates[len(candidates) // 2:])  # a late line: a long context
        context = "".join(x + "\n" for x in lines[:k])
        rows.append(_row("local_lcc", len(rows), context, "", lines[k].rstrip()))
    if len(rows) < n_samples:
        raise EvalError(f"local_lcc: found only {len(rows)} usable stdlib files for {n_samples} samples")
    return rows


def write_local_tasks(folder: Path, tok: Tokenizer, n_samples: int, budgets: dict[str, int], seed: int) -> None:
    """Write <task>.jsonl of every offline task into folder (deterministic in seed and budgets)."""
    for task in LOCAL_TASKS:
        rows = make_local_task(task, tok, n_samples, budgets[task], seed)
        write_text_atomic(Path(folder) / f"{task}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
