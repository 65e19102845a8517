"""Reproduce the NSA paper's comparison at small scale: one command, one report.

    python scripts/reproduce.py --scale cpu                           # minutes on 2 CPU cores -> docs/results/cpu/
    python scripts/reproduce.py --scale gpu-small --time-budget 540   # one H100; re-run until it says "complete"
    python scripts/reproduce.py --scale gpu-small --parallel 2 --nproc-per-node 2 --time-budget 570   # 4 GPUs
    python scripts/reproduce.py --scale paper --nproc-per-node 8 --longbench-dir /data/LongBench/data
    python scripts/reproduce.py --scale cpu --seeds 0 1 2             # more seeds (finished ones are kept)
    python scripts/reproduce.py --scale gpu-small --curriculum data.mix.filler=1.0 --curriculum-steps 1200 \
        --train-set 'data.mix.kinds=[passkey,needle]' --work-dir runs/repro-curriculum
                                       # two stages: needles in filler first, then in real text (NIAH)
    python scripts/reproduce.py --scale gpu-small --seeds 4 --bench-from attention=A.json --bench-from decode=D.json
                                       # a seed more; the benchmarks measured earlier (their --out files) are reused
    python scripts/reproduce.py --scale cpu --report-only             # figures + REPORT.md from existing outputs
    python scripts/reproduce.py --scale cpu --dry-run                 # the plan: each step, done or to do

Full attention and NSA are trained with identical data, tokens, optimizer, model shape and seed
(configs/experiment/repro_<scale>.yaml holds everything they share; repro_<scale>_{full,nsa}.yaml add the
attention), then evaluated on the same samples. Steps, each a subprocess whose output goes to WORK/logs/:
  1. per seed: train.py for both models (WORK/runs/<arm>-s<seed>), then eval.py on both (WORK/eval/<arm>-s<seed>)
     over the scale's grids up to twice the training length;
  2. with a CUDA GPU: scripts/bench_attention.py (Figure 6) and scripts/bench_decode.py (Table 4), or their
     results from files (--bench-from: measured in another call, so a call can spend its time on training);
  3. the report (evaluation/compare.py): figures, each with its JSON, and REPORT.md in REPORT_DIR.
One step at a time, in that order; --parallel N runs up to N steps at once, each on its own GPU (its own
--nproc-per-node GPUs with torchrun; CUDA_VISIBLE_DEVICES): an eval starts once its own training run has
finished, and the benchmarks once every train and eval step has (so that nothing else runs on the GPUs while
they time kernels). `--parallel 2 --nproc-per-node 2` on 4 GPUs trains both models at once, each on two.
With --curriculum KEY=VALUE ... --curriculum-steps N, each training runs in two stages in the same run folder:
the first N steps with those overrides, then the rest without (resuming the first stage's last checkpoint;
both follow the whole run's learning-rate curve, optim.schedule_steps).
Resumable: a finished step is skipped (training: its final checkpoint exists; the others: WORK/progress.json
records them done with the same command and their output is there), training resumes from its newest
checkpoint, and --time-budget stops cleanly before the budget runs out (exit code 3: run the command again).
A failed step is reported with its log's tail; the other steps still run and the report shows what exists.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tqdm.auto import tqdm  # noqa: E402

from evaluation.compare import ARMS, read_json  # noqa: E402
from evaluation.report import write_json_atomic  # noqa: E402

EXIT_BUDGET = 3  # stopped by --time-budget: run the same command again to continue
BENCHES = {"attention": "bench_attention.py", "decode": "bench_decode.py"}  # benchmark step -> its script


@dataclass(frozen=True)
class Scale:
    """What one --scale runs. The training recipe is the Hydra preset; evaluation and benchmarks are here."""

    experiment: str  # configs/experiment/<experiment>_{full,nsa}.yaml
    seeds: tuple[int, ...]
    eval_overrides: tuple[str, ...]  # eval.py overrides (grids up to 2x the training length)
    bench_attention: tuple[str, ...]  # scripts/bench_attention.py arguments (GPU only)
    bench_decode: tuple[str, ...]  # scripts/bench_decode.py arguments (GPU only)
    nproc_per_node: int = 1  # > 1: training runs under torchrun
    about: str = ""


GRID_11 = "[0,10,20,30,40,50,60,70,80,90,100]"
SCALES = {
    "cpu": Scale(
        experiment="repro_cpu",
        seeds=(0,),
        eval_overrides=(
            "tasks=[ppl_position,passkey,niah,ruler,mqar,longbench]", "eval.max_length=512", "eval.batch_size=8",
            "ppl_position.samples=8", "ppl_position.buckets=8",
            "passkey.lengths=[128,192,256,384,512]", "passkey.samples=4",
            "niah.lengths=[128,192,256,384,512]", "niah.samples=2",
            "ruler.lengths=[256,512]", "ruler.samples=2", "ruler.max_new_tokens=16",
            "ruler.tasks=[niah_single,niah_multikey,niah_multivalue,vt]",
            "mqar.lengths=[128,256,512]", "mqar.samples=8",
            "longbench.local_samples=3",
        ),
        bench_attention=("--sections", "main", "--T", "8192", "16384"),
        bench_decode=("--sections", "attn", "--T", "8192", "16384"),
        about="CPU pipeline check: tiny model, 256 tokens, 200 steps; evaluated up to 512 tokens",
    ),
    "gpu-small": Scale(
        experiment="repro_gpu_small",
        seeds=(0, 1),  # retrieval appears suddenly and at a seed-dependent step: one seed can mislead
        eval_overrides=(
            "tasks=[ppl_position,passkey,niah,ruler,mqar,longbench]", "eval.max_length=16384", "eval.batch_size=8",
            "ppl_position.samples=8", "ppl_position.buckets=16",  # the val split holds ~9 windows of 16k
            "passkey.lengths=[1024,2048,4096,8192,12288,16384]", f"passkey.depths={GRID_11}", "passkey.samples=4",
            "niah.lengths=[1024,2048,4096,8192,12288,16384]", f"niah.depths={GRID_11}", "niah.samples=4",
            "ruler.lengths=[4096,8192,16384]", "ruler.samples=4", "ruler.max_new_tokens=32",
            "mqar.lengths=[2048,8192,16384]", "mqar.samples=16",
            "longbench.local_samples=8", "longbench.max_length=8000",
        ),
        bench_attention=("--sections", "main"),
        bench_decode=("--sections", "bandwidth", "attn", "generate"),
        about="one H100 (resumable), or 4 GPUs with --parallel 2 --nproc-per-node 2: 35M-parameter GQA-16 model at "
              "8k context, ~157M tokens per model, 90% of the samples synthetic retrieval documents; two seeds; "
              "evaluated up to 16k",
    ),
    "paper": Scale(
        experiment="repro_paper",
        seeds=(0,),
        eval_overrides=(
            "tasks=[ppl_position,passkey,niah,ruler,mqar,longbench]", "eval.max_length=16384", "eval.batch_size=8",
            "ppl_position.samples=64", "ppl_position.buckets=16",
            "passkey.lengths=[1024,2048,4096,8192,12288,16384]", f"passkey.depths={GRID_11}", "passkey.samples=10",
            "niah.lengths=[1024,2048,4096,8192,12288,16384]", f"niah.depths={GRID_11}", "niah.samples=10",
            "ruler.samples=20", "mqar.samples=32", "longbench.max_length=8000",
        ),
        bench_attention=("--sections", "main", "paper"),
        bench_decode=("--sections", "bandwidth", "attn", "generate"),
        nproc_per_node=8,
        about="one 8-GPU node: 118M-parameter GQA-16 model at 8k context on FineWeb-Edu, ~10B tokens per model",
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# what is done


def final_step(run_dir: Path) -> int:
    """Step of the newest complete checkpoint in run_dir (0 if none)."""
    from training.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return int(re.search(r"(\d+)", found[-1].stem).group(1)) if found else 0


def compose(config_name: str, overrides: list[str], what: str):
    """The config train.py / eval.py would see: bad overrides fail here, before anything runs, in one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from evaluation.config import register_configs as register_eval
    from training.config import register_configs as register_train

    register_train()
    register_eval()
    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    except Exception as e:  # Hydra's composition / override-parsing errors
        msg = " ".join(str(e).split())
        raise SystemExit(f"error: {what}: {msg}") from None


def compose_train(experiment: str, overrides: list[str]):
    return compose("config", [f"experiment={experiment}", *overrides], f"experiment={experiment} with --train-set "
                   f"{overrides}")


@dataclass
class Step:
    id: str
    kind: str  # train | eval | bench | note
    command: list[str]
    done: bool
    total: int | None = None  # training steps, for the progress bar
    out: Path | None = None  # an output folder / file this step produces
    needs: tuple[Path, int] | None = None  # (run_dir, step): an eval needs that run's final checkpoint
    script: str | None = None  # a benchmark's script (it may not exist yet)
    after: str | None = None  # a step that must have finished ("done") first: a curriculum's first stage

    @property
    def text(self) -> str:
        return shlex.join(self.command)


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scale = SCALES[args.scale]
        self.work = Path(args.work_dir or REPO / "runs" / f"repro-{args.scale}").resolve()
        self.report_dir = Path(args.report_dir or REPO / "docs" / "results" / args.scale).resolve()
        self.seeds = list(args.seeds if args.seeds is not None else self.scale.seeds)
        self.train_overrides = list(args.train_set or [])
        if args.steps is not None:
            self.train_overrides.append(f"train.steps={args.steps}")
        # a two-stage curriculum: the first --curriculum-steps steps with the --curriculum overrides, then the rest
        # without them, in the same run folder (the second stage resumes the first's last checkpoint)
        self.curriculum = list(args.curriculum or [])
        self.curriculum_steps = args.curriculum_steps or 0
        if bool(self.curriculum) != bool(self.curriculum_steps):
            raise SystemExit("error: --curriculum and --curriculum-steps go together: the overrides of the first "
                             "stage and how many steps it lasts")
        self.eval_overrides = [*self.scale.eval_overrides, *(args.eval_set or [])]
        if args.longbench_dir:
            self.eval_overrides.append(f"longbench.data_dir={Path(args.longbench_dir).resolve()}")
        # --bench-from NAME=FILE: a benchmark measured outside this run (e.g. an earlier device call on the same
        # card) is taken from FILE instead of being run here: name -> (FILE, its results, read once)
        self.bench_from: dict[str, tuple[Path, dict[str, Any]]] = {}
        for item in args.bench_from or []:
            name, _, file = item.partition("=")
            if name not in BENCHES or not file:
                raise SystemExit(f"error: --bench-from {item}: expected NAME=FILE, NAME one of {', '.join(BENCHES)}")
            results = read_json(Path(file))
            if not isinstance(results, dict):
                raise SystemExit(f"error: --bench-from {item}: not a readable JSON file; write it with "
                                 f"scripts/{BENCHES[name]} --out FILE")
            self.bench_from[name] = (Path(file).resolve(), results)
        self.progress: dict[str, Any] = read_json(self.work / "progress.json") or {}
        self.manifest: dict[str, Any] = read_json(self.work / "manifest.json") or {}
        self.deadline = time.monotonic() + args.time_budget if args.time_budget else None
        self.nproc = args.nproc_per_node or self.scale.nproc_per_node
        # slot -> CUDA_VISIBLE_DEVICES: nproc GPUs each, so a torchrun training has a slot to itself
        self.gpus = gpu_slots(args.parallel, self.nproc) if args.parallel > 1 else [None]
        # steps running side by side save progress.json one at a time: the atomic write's temp file is named per
        # process, and the dict must not change while it is dumped
        self.lock = threading.Lock()

    # -- the plan ------------------------------------------------------------------------------------------
    def experiment(self, arm: str) -> str:
        return f"{self.scale.experiment}_{arm}"

    def launcher(self, script: str) -> list[str]:
        """Commands start with "python" (recorded and compared as such; run with this interpreter)."""
        if script == "train.py" and self.nproc > 1:
            return ["python", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}", script]
        return ["python", script]

    def recorded(self, step_id: str, command: list[str], out: Path) -> bool:
        entry = self.progress.get(step_id) or {}
        return entry.get("status") == "done" and entry.get("command") == shlex.join(command) and out.exists()

    def plan(self) -> list[Step]:
        steps = []
        targets = {arm: int(compose_train(self.experiment(arm), self.train_overrides).train.steps) for arm in ARMS}
        compose("eval", ["checkpoint=x", "out_dir=x", *self.eval_overrides], "eval overrides (--eval-set)")
        n1 = self.curriculum_steps
        if n1 and not all(0 < n1 < t for t in targets.values()):
            raise SystemExit(f"error: --curriculum-steps {n1} must be between 0 and train.steps ({targets['full']})")
        for seed in self.seeds:
            for arm in ARMS:
                run_dir = self.work / "runs" / f"{arm}-s{seed}"
                cmd = [*self.launcher("train.py"), f"experiment={self.experiment(arm)}", f"run_dir={relative(run_dir)}",
                       f"train.seed={seed}", *self.train_overrides]
                stage1 = None
                if n1:  # both stages follow the whole run's learning-rate curve
                    cmd.append(f"optim.schedule_steps={targets[arm]}")
                    stage1 = f"stage1/{arm}-s{seed}"
                    steps.append(Step(stage1, "train", [*cmd, *self.curriculum, f"train.steps={n1}"],
                                      final_step(run_dir) >= n1, total=n1, out=run_dir))
                steps.append(Step(f"train/{arm}-s{seed}", "train", cmd, final_step(run_dir) >= targets[arm],
                                  total=targets[arm], out=run_dir, after=stage1))
            for arm in ARMS:
                run_dir, out = self.work / "runs" / f"{arm}-s{seed}", self.work / "eval" / f"{arm}-s{seed}"
                cmd = [*self.launcher("eval.py"), f"checkpoint={relative(run_dir)}", f"out_dir={relative(out)}",
                       *self.eval_overrides]
                results = read_json(out / "results.json") or {}
                done = self.recorded(f"eval/{arm}-s{seed}", cmd, out / "results.json") and \
                    results.get("step") == targets[arm]
                steps.append(Step(f"eval/{arm}-s{seed}", "eval", cmd, done, out=out, needs=(run_dir, targets[arm])))
        bench = self.work / "bench"
        for name, extra in (("attention", self.scale.bench_attention), ("decode", self.scale.bench_decode)):
            out, script = bench / f"{name}.json", BENCHES[name]
            cmd = [*self.launcher(f"scripts/{script}"), *extra, "--out", relative(bench / f"{name}.partial.json")]
            done = name in self.bench_from or self.recorded(f"bench_{name}", cmd, out)
            steps.append(Step(f"bench_{name}", "bench", cmd, done, out=out, script=f"scripts/{script}"))
        return steps

    def adopt_benchmarks(self, steps: list[Step]) -> None:
        """Copy the --bench-from files into the work folder and record their steps as done, with where they came
        from (the report's table of steps shows it)."""
        for step in steps:
            name = step.id.removeprefix("bench_")
            if step.kind == "bench" and name in self.bench_from:
                source, results = self.bench_from[name]
                write_json_atomic(step.out, results)
                self.save_progress(step, "done", note=f"taken from {source} (--bench-from): measured outside this run")

    def skip_reason(self, step: Step) -> str | None:
        """Why a step cannot run on this machine (recorded in the report), or None."""
        if step.kind == "bench":
            script = REPO / step.script
            if not script.is_file():
                return f"skipped: {relative(script)} does not exist yet"
            import torch

            if not torch.cuda.is_available():
                return "skipped: no CUDA GPU on this machine (the benchmark times Triton kernels on a GPU)"
        if step.needs and final_step(step.needs[0]) < step.needs[1]:
            return f"skipped: {relative(step.needs[0])} has no checkpoint of step {step.needs[1]} (training failed)"
        return None

    # -- running -------------------------------------------------------------------------------------------
    def save_progress(self, step: Step, status: str, seconds: float = 0.0, note: str | None = None,
                      gpu: str | None = None) -> None:
        with self.lock:
            old = self.progress.get(step.id) or {}
            same = old.get("command") == step.text
            entry = {
                "kind": step.kind, "status": status, "command": step.text,
                # time is summed over resumed attempts of the same command (a run split by --time-budget)
                "seconds": (old.get("seconds", 0.0) if same and old.get("status") != "done" else 0.0) + seconds,
                "note": note, "log": relative(self.work / "logs" / f"{step.id.replace('/', '_')}.log"),
                "updated": now(),
            }
            if gpu is not None:  # --parallel: the CUDA_VISIBLE_DEVICES it ran with
                entry["gpu"] = gpu
            self.progress[step.id] = entry
            write_json_atomic(self.work / "progress.json", self.progress)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def execute(self, step: Step, index: int, count: int, slot: int = 0) -> str:
        """Run one step on GPU slot `slot` (--parallel); returns its status: done | failed | stopped."""
        gpu = self.gpus[slot]
        log = self.work / "logs" / f"{step.id.replace('/', '_')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if step.kind == "eval" and step.out.exists():
            # outputs of another command or of an older checkpoint: start clean (a rerun of the same command after
            # a crash keeps them, so LongBench resumes after the predictions already made)
            entry = self.progress.get(step.id) or {}
            results = read_json(step.out / "results.json") or {}
            if entry.get("command") != step.text or results.get("step") not in (None, step.needs[1]):
                shutil.rmtree(step.out)
        tqdm.write(f"[{index}/{count}] {step.id}{'' if gpu is None else f' (GPU {gpu})'}: {step.text}")
        remaining = self.remaining()
        timeout = None if remaining is None else max(1.0, remaining - self.args.reserve)
        t0 = time.monotonic()
        rc = run_logged(step.command, log, total=step.total, desc=step.id, timeout=timeout, verbose=self.args.verbose,
                        position=None if gpu is None else slot, env=None if gpu is None else {
                            "CUDA_VISIBLE_DEVICES": gpu})
        seconds = time.monotonic() - t0
        if rc is None:
            self.save_progress(step, "stopped", seconds, "time budget reached; re-run to continue", gpu)
            return "stopped"
        if rc != 0:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            tqdm.write(f"    {step.id} FAILED (exit {rc}); last lines of {relative(log)}:\n      "
                       + "\n      ".join(tail))
            self.save_progress(step, "failed", seconds, f"exit code {rc}; see {relative(log)}", gpu)
            return "failed"
        if step.kind == "bench":
            partial = Path(step.command[-1])
            os.replace(partial if partial.is_absolute() else REPO / partial, step.out)
        self.save_progress(step, "done", seconds, gpu=gpu)
        tqdm.write(f"    {'' if gpu is None else step.id + ' '}done in {seconds:.0f} s")
        return "done"

    def prepare_data(self) -> None:
        """Prepare the shared training data once, here: trainings started side by side would each prepare it
        (correct, since prepare swaps its output in atomically, but N times the work)."""
        from data import prepare
        from data.config import as_data_config

        cfg = compose_train(self.experiment(ARMS[0]), self.train_overrides)
        tqdm.write(f"data: {prepare(as_data_config(cfg.data))}")

    def schedule(self, steps: list[Step], todo: list[Step], statuses: dict[str, str]) -> bool:
        """Run `todo` (the unfinished part of `steps`), each step as soon as a GPU slot is free and what it needs
        has finished: an eval its own training run, a benchmark every train and eval step. With one slot this is
        plan order, one after another. Fills `statuses`; returns whether the time budget stopped the run."""
        trainer = {s.out: s.id for s in steps if s.kind == "train"}
        gpu_work = [s.id for s in steps if s.kind in ("train", "eval")]
        finished: queue.Queue[tuple[Step, int, str | BaseException]] = queue.Queue()
        pending, free, running, stopped = list(todo), list(range(len(self.gpus))), 0, False

        def ready(step: Step) -> bool:
            if step.kind == "bench":
                return all(i in statuses for i in gpu_work)
            if step.after is not None and step.after not in statuses:
                return False
            return step.needs is None or trainer[step.needs[0]] in statuses

        def work(step: Step, index: int, slot: int) -> None:
            try:
                result = self.execute(step, index, len(todo), slot)
            except BaseException as e:  # raised again below, as if the step had run in this thread
                result = e
            finished.put((step, slot, result))

        while pending or running:
            while free and not stopped and (step := next((s for s in pending if ready(s)), None)):
                pending.remove(step)
                index = todo.index(step) + 1
                reason = self.skip_reason(step)
                if step.after is not None and statuses[step.after] not in ("done", None):
                    reason = f"skipped: {step.after} did not finish ({statuses[step.after]})"
                if reason:
                    tqdm.write(f"[{index}/{len(todo)}] {step.id}: {reason}")
                    self.save_progress(step, "skipped", note=reason)
                    statuses[step.id] = "skipped"
                    continue
                rem = self.remaining()
                if rem is not None and rem < self.args.reserve:
                    tqdm.write(f"[{index}/{len(todo)}] {step.id}: not started, {rem:.0f} s left of the time budget")
                    stopped = True
                    break
                running += 1
                threading.Thread(target=work, args=(step, index, free.pop(0)), daemon=True).start()
            if not running:
                break  # nothing left that may start (stopped by the time budget)
            step, slot, result = finished.get()
            if isinstance(result, BaseException):
                raise result
            statuses[step.id] = result
            running -= 1
            free.append(slot)
            free.sort()  # the lowest free slot next: its tqdm bar sits nearest the top
            stopped = stopped or statuses[step.id] == "stopped"
        return stopped

    def write_manifest(self, started: str, seconds: float, result: str) -> None:
        import torch

        inv = {"command": "python " + shlex.join([relative(Path(sys.argv[0])), *sys.argv[1:]]), "started": started,
               "seconds": round(seconds, 1), "result": result, "parallel": self.args.parallel,
               "git_commit": git_commit(), "device": device_name()}
        self.manifest.update({
            "scale": self.args.scale,
            "about": self.scale.about,
            "seeds": self.seeds,
            "work_dir": relative(self.work),
            "report_dir": relative(self.report_dir),
            "experiments": {arm: self.experiment(arm) for arm in ARMS},
            "train_overrides": self.train_overrides,
            "curriculum": self.curriculum_record(),
            "eval_overrides": self.eval_overrides,
            "device": device_name(),
            "torch": torch.__version__,
            "git_commit": git_commit(),
        })
        self.manifest.setdefault("invocations", []).append(inv)
        write_json_atomic(self.work / "manifest.json", self.manifest)

    def curriculum_record(self) -> dict[str, Any] | None:
        """The curriculum's first stage as the manifest records it (None without one)."""
        return {"overrides": self.curriculum, "steps": self.curriculum_steps} if self.curriculum else None

    def check_same_training(self) -> None:
        """A work folder holds one training recipe: refuse to mix runs of different settings."""
        old = (self.manifest.get("experiments"), self.manifest.get("train_overrides"), self.manifest.get("curriculum"))
        new = ({arm: self.experiment(arm) for arm in ARMS}, self.train_overrides, self.curriculum_record())
        if self.manifest.get("experiments") is not None and old != new:
            def recipe(r):
                return f"{r[1] or 'no overrides'}" + (f", curriculum {r[2]}" if r[2] else "")
            raise SystemExit(f"error: {relative(self.work)} holds runs trained with {recipe(old)} "
                             f"({old[0]}), not {recipe(new)}: pass --work-dir NEW_FOLDER (and "
                             "--report-dir) or delete the old folder")

    def run(self) -> int:
        started, t0 = now(), time.monotonic()
        if self.args.report_only:
            return self.report()
        self.check_same_training()
        steps = self.plan()
        if self.args.dry_run:
            for s in steps:
                print(f"{'done' if s.done else 'todo'}  {s.id}: {s.text}")
            return 0
        self.work.mkdir(parents=True, exist_ok=True)
        self.adopt_benchmarks(steps)
        self.write_manifest(started, 0.0, "running")
        statuses = {}
        todo = [s for s in steps if not s.done]
        for s in steps:
            if s.done:
                statuses[s.id] = "done"
                tqdm.write(f"[done] {s.id} (skipped: finished earlier)")
        if len(self.gpus) > 1 and any(s.kind == "train" for s in todo):
            self.prepare_data()
        stopped = self.schedule(steps, todo, statuses)
        failed = [k for k, v in statuses.items() if v == "failed"]
        result = "stopped" if stopped else "failed" if failed else "complete"
        self.manifest["invocations"].pop()  # replaced by the final record of this invocation
        self.write_manifest(started, time.monotonic() - t0, result)
        rc = self.report()
        if stopped:
            print(f"time budget reached: run the same command again to continue ({relative(self.work)})")
            return EXIT_BUDGET
        if failed:
            print(f"failed steps: {failed} (logs in {relative(self.work / 'logs')}); the report shows what exists")
            return 1
        print(f"complete: {relative(self.report_dir / 'REPORT.md')}")
        return rc

    def report(self) -> int:
        from evaluation.compare import build

        if not (self.work / "manifest.json").is_file() and not (self.work / "runs").is_dir():
            raise SystemExit(f"error: {relative(self.work)} holds no reproduction outputs: run without --report-only "
                             "first, or pass --work-dir")
        build(self.work, self.report_dir)
        print(f"report: {relative(self.report_dir / 'REPORT.md')}")
        return 0


# ---------------------------------------------------------------------------------------------------------------
# helpers

TRAIN_STEP = re.compile(rb"step\s+(\d+)/(\d+)")


def run_logged(cmd: list[str], log: Path, total: int | None, desc: str, timeout: float | None,
               verbose: bool, position: int | None = None, env: dict[str, str] | None = None) -> int | None:
    """Run cmd in the repo root with its output appended to log and `env` added to its environment; a tqdm bar
    (on line `position`, for steps running side by side) follows training steps (or shows the newest output line).
    Returns the exit code, or None when it was stopped at `timeout` seconds (SIGTERM to its process group, SIGKILL
    30 s later: checkpoints are written atomically, so a run stopped anywhere resumes)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable if i == 0 and c == "python" else c for i, c in enumerate(cmd)]
    with open(log, "ab") as f:
        f.write(f"\n==== {now()} {shlex.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, position=position,
                   bar_format=None if total else "{desc}: {elapsed} {postfix}")

        def pump() -> None:
            while chunk := proc.stdout.read1(65536):
                f.write(chunk)
                f.flush()
                if verbose:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                steps = TRAIN_STEP.findall(chunk)
                if steps and total:
                    bar.n = int(steps[-1][0])
                    bar.refresh()
                elif not total:
                    last = [s for s in re.split(rb"[\r\n]", chunk) if s.strip()]
                    if last:
                        bar.set_postfix_str(last[-1].decode(errors="replace")[:60], refresh=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
        reader.join()
        bar.close()
    return rc


def gpu_slots(n: int, per_slot: int = 1) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each of n slots with per_slot GPUs each (a torchrun training takes a whole slot):
    slot i gets GPUs i*per_slot .. (i+1)*per_slot - 1, counted in the CUDA_VISIBLE_DEVICES already set if any."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = [str(i) for i in range(n * per_slot)] if visible is None else \
        [d.strip() for d in visible.split(",") if d.strip()]
    if len(listed) < n * per_slot:
        each = f" ({per_slot} per step)" if per_slot > 1 else ""
        raise SystemExit(f"error: --parallel {n} needs {n * per_slot} GPUs{each} but CUDA_VISIBLE_DEVICES={visible!r} "
                         f"lists {len(listed)}: pass --parallel {max(1, len(listed) // per_slot)} or list more GPUs")
    return [",".join(listed[i * per_slot:(i + 1) * per_slot]) for i in range(n)]


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n} x {torch.cuda.get_device_name(0)}"
    model = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, no GPU"


def git_commit() -> str:
    """HEAD's short hash, with " + uncommitted changes" when tracked files differ from it (e.g. a copy of the
    working tree shipped to another machine beside an older .git: the hash alone would name the wrong code)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        head = git("rev-parse", "--short", "HEAD") or "?"
        dirty = head != "?" and git("status", "--porcelain", "--untracked-files=no")
        return f"{head} + uncommitted changes" if dirty else head
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=list(SCALES), required=True, help="the preset: " + "; ".join(
        f"{k}: {v.about}" for k, v in SCALES.items()).replace("%", "%%"))  # argparse formats help with %
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the scale's)")
    p.add_argument("--steps", type=int, help="train.steps for both models (default: the preset's)")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="extra train.py override for both models")
    p.add_argument("--curriculum", action="append", metavar="KEY=VALUE",
                   help="train.py override for the first --curriculum-steps steps only (a two-stage curriculum, e.g. "
                        "data.mix.filler=1.0: needles in filler first, then in real text)")
    p.add_argument("--curriculum-steps", type=int, metavar="N", help="steps of the curriculum's first stage")
    p.add_argument("--eval-set", action="append", metavar="KEY=VALUE", help="extra eval.py override for both models")
    p.add_argument("--longbench-dir", help="LongBench's data folder (<task>.jsonl files): adds the real tasks")
    p.add_argument("--nproc-per-node", type=int, help="GPUs for training (torchrun when > 1; default: the scale's)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run up to N steps at once, each on its own --nproc-per-node GPUs (CUDA_VISIBLE_DEVICES); "
                        "default 1: one after another")
    p.add_argument("--bench-from", action="append", metavar="NAME=FILE",
                   help="take a benchmark's results from FILE instead of running it (NAME: attention or decode; FILE: "
                        "what its script wrote with --out, e.g. in an earlier call on the same card)")
    p.add_argument("--work-dir", help="where runs, evals, benchmarks and logs go (default: runs/repro-<scale>)")
    p.add_argument("--report-dir", help="where figures, JSON and REPORT.md go (default: docs/results/<scale>)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop cleanly before this many seconds have passed (exit 3: run again to continue)")
    p.add_argument("--reserve", type=float, default=30.0, metavar="SECONDS",
                   help="seconds of the time budget kept for stopping a step and the report; no step starts with "
                        "less left (default 30)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from existing outputs")
    p.add_argument("--dry-run", action="store_true", help="print each step, done or to do, and exit")
    p.add_argument("--verbose", action="store_true", help="also stream every step's output (always in WORK/logs/)")
    args = p.parse_args(argv)
    if args.scale != "cpu" and args.nproc_per_node is None and SCALES[args.scale].nproc_per_node > 1:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() < SCALES[args.scale].nproc_per_node:
            args.nproc_per_node = torch.cuda.device_count()
    if args.parallel < 1:
        raise SystemExit(f"error: --parallel {args.parallel}: pass 1 (one step after another) or more")
    if args.parallel > 1:
        import torch

        nproc = args.nproc_per_node or SCALES[args.scale].nproc_per_node  # GPUs per slot
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else None
        if n_gpus is not None and args.parallel * nproc > n_gpus:
            raise SystemExit(f"error: --parallel {args.parallel} x {nproc} GPU(s) per step but only {n_gpus} CUDA "
                             f"GPU(s) are visible: pass --parallel {max(1, n_gpus // nproc)} or fewer"
                             + (" (or a smaller --nproc-per-node)" if nproc > 1 else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    return Driver(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
