"""The trainer end to end on CPU: composition, exact resume, DDP equivalence, failure handling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from model import GPT
from tests.conftest import REPO, compose_config
from training import checkpoint as ckpt_io
from training.config import to_dataclass, validate
from training.trainer import reset_grads, train

# A small, fast setting of the default tiny model.
FAST = [
    "model.max_seq_len=64",
    "train.micro_batch_size=4",
    "train.batch_tokens=512",
    "train.log_interval=5",
    "train.val_interval=5",
    "train.val_tokens=1024",
    "optim.warmup_steps=2",
]


def run(tmp: Path, overrides: list[str], data: list[str]) -> dict:
    return train(compose_config([f"run_dir={tmp}", *FAST, *data, *overrides]))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_experiment_composes():
    names = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
    assert names, "no experiment presets found"
    for name in names:
        cfg = to_dataclass(compose_config([f"experiment={name}", "run_dir=/tmp/unused"]))
        validate(cfg)
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = 2048
        with torch.device("meta"):
            GPT(cfg.model, cfg.attention)


def test_bad_overrides_fail_clearly():
    with pytest.raises(ConfigCompositionException, match="stpes"):
        compose_config(["train.stpes=10"])
    with pytest.raises((ConfigCompositionException, ValidationError), match="ten"):
        to_dataclass(compose_config(["train.steps=ten"]))
    with pytest.raises(ValueError, match="optim.schedule='linear'"):
        validate(to_dataclass(compose_config(["optim.schedule=linear", "run_dir=x"])))
    with pytest.raises(ValueError, match="train.compile_mode='fast' is not one of"):
        validate(to_dataclass(compose_config(["train.compile_mode=fast", "run_dir=x"])))
    with pytest.raises(ValueError, match="train.batch_tokens"):
        from training.config import grad_accum_steps

        grad_accum_steps(to_dataclass(compose_config(["train.batch_tokens=1000", "run_dir=x"])), 1)


def test_reset_grads_with_cuda_graphs_keeps_zeroed_buffers():
    """With CUDA graphs the gradients stay allocated (the same tensors, zeroed) and accumulate exactly as freshly
    created ones do; without, they are freed."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(4, 5)
    model(x).square().sum().backward()
    expected = [p.grad.clone() for p in params]
    reset_grads(opt, params, graphs=True)
    buffers = [p.grad for p in params]
    assert all(torch.count_nonzero(g) == 0 for g in buffers)
    model(x).square().sum().backward()
    assert all(p.grad is b for p, b in zip(params, buffers))  # accumulated in place, not replaced
    assert all(torch.equal(p.grad, e) for p, e in zip(params, expected))
    reset_grads(opt, params, graphs=False)
    assert all(p.grad is None for p in params)


def test_exact_resume_and_mismatch(tmp_path, data_overrides):
    """20 steps straight == 10 steps + resume + 10 steps, bit for bit; a different model is refused.
    The first half runs the first 10 steps of the 20-step schedule (optim.schedule_steps), as a stopped run would."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(straight, ["train.steps=20", "train.ckpt_interval=10"], data_overrides)
    run(split, ["train.steps=10", "optim.schedule_steps=20"], data_overrides)
    assert [p.name for p in ckpt_io.list_checkpoints(split)] == ["step_0000010.pt"]
    run(split, ["train.steps=20"], data_overrides)  # train.resume=auto picks up step 10
    a, b = metrics(straight), metrics(split)
    assert [r["step"] for r in b] == list(range(1, 21))
    for key in ("loss", "grad_norm", "lr", "tokens"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert [r.get("val_loss") for r in a] == [r.get("val_loss") for r in b]
    wa = ckpt_io.load_checkpoint(ckpt_io.list_checkpoints(straight)[-1])
    wb = ckpt_io.load_checkpoint(ckpt_io.list_checkpoints(split)[-1])
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    assert wb["config"]["model"]["n_layer"] == 4 and wb["tokens"] == 20 * 512
    assert (split / "config.yaml").read_text().startswith("model:")
    # a checkpoint from another model config is refused with a clear message
    with pytest.raises(ValueError, match="different model config.*n_layer"):
        run(split, ["train.steps=30", "model.n_layer=3"], data_overrides)
    with pytest.raises(ValueError, match="train.resume=never would overwrite"):
        run(split, ["train.steps=30", "train.resume=never"], data_overrides)


def test_loss_falls_and_metrics_schema(tmp_path, data_overrides):
    run(tmp_path, ["train.steps=30", "optim.lr=3e-3"], data_overrides)
    rows = metrics(tmp_path)
    assert len(rows) == 30
    required = {"step", "tokens", "loss", "lr", "grad_norm", "tok_per_s", "mfu", "mem_gb"}
    assert all(required <= set(r) for r in rows)
    assert rows[0]["mfu"] is None  # CPU
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert [r["step"] for r in rows if "val_loss" in r] == [5, 10, 15, 20, 25, 30]
    assert rows[0]["attn_keys_total"] == pytest.approx(32.5)  # full attention at T=64


def test_nonfinite_steps_are_skipped_then_fatal(tmp_path, data_overrides, monkeypatch):
    """Non-finite losses skip the update (weights unchanged) and are counted; K in a row stop the run."""
    real_forward = GPT.forward
    calls = {"n": 0}
    poison = {3, 4}  # forward calls (1 micro-step per optimizer step here) that return a NaN loss

    def forward(self, idx, targets=None, caches=None):
        logits, loss = real_forward(self, idx, targets, caches)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] in poison:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    fast = ["train.batch_tokens=256", "train.val_interval=0"]
    run(tmp_path / "a", ["train.steps=6", "train.max_bad_steps=3", *fast], data_overrides)
    rows = metrics(tmp_path / "a")
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 2, 2, 2]
    assert rows[2]["loss"] is None and rows[4]["loss"] is not None
    calls["n"] = 0
    poison.update(range(2, 100))  # now every step after the first is non-finite
    with pytest.raises(RuntimeError, match="3 optimizer steps in a row"):
        run(tmp_path / "b", ["train.steps=10", "train.max_bad_steps=3", *fast], data_overrides)


def _train_cmd(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(REPO / "train.py")]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(REPO / "train.py")]  # fmt: skip


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_gloo_matches_one_process(tmp_path, data_overrides, parallel):
    """torchrun with 2 CPU processes gives the losses of 1 process with the same global batch; both ranks
    share one run dir computed from the config (no run_dir given)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # val_tokens=640: 10 sequences, not a multiple of micro_batch_size x world_size (padding rows are ignored)
    args = [*FAST, *data_overrides, "train.steps=6", "train.batch_tokens=1024", f"train.parallel={parallel}",
            "train.val_tokens=640"]  # fmt: skip
    one = tmp_path / "one"
    subprocess.run([*_train_cmd(1), f"run_dir={one}", *args], check=True, env=env, cwd=tmp_path)
    subprocess.run([*_train_cmd(2), *args], check=True, env=env, cwd=tmp_path)
    two = tmp_path / "runs" / "tiny-full-pystdlib-s0"
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl"]
    a, b = metrics(one), metrics(two)
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-5)


def test_wandb_offline_run_id_kept_across_resume(tmp_path, data_overrides, monkeypatch):
    """logger=wandb in offline mode (no network): the run id is stored in checkpoints and reused on resume."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = ["logger=wandb", "logger.mode=offline", "train.val_interval=0", "train.batch_tokens=256"]
    run(tmp_path, ["train.steps=1", *common], data_overrides)
    run(tmp_path, ["train.steps=2", *common], data_overrides)
    ids = [ckpt_io.load_checkpoint(p)["wandb_id"] for p in ckpt_io.list_checkpoints(tmp_path)]
    assert len(ids) == 2 and ids[0] and ids[0] == ids[1]
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{ids[0]}"))) == 2


def test_killed_rank_restarts_from_newest_checkpoint(tmp_path, data_overrides):
    """torchrun --max-restarts=1: SIGKILL one rank mid-run; the restarted group resumes from the newest checkpoint
    and finishes with exactly the losses of an uninterrupted run (it loses only the steps since the checkpoint)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*FAST, *data_overrides, "train.steps=40", "train.batch_tokens=1024", "train.ckpt_interval=5",
            "train.val_interval=0"]  # fmt: skip
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    subprocess.run([*_train_cmd(2), f"run_dir={clean}", *args], check=True, env=env, cwd=tmp_path)

    cmd = [*_train_cmd(2)[:3], "--max-restarts=1", *_train_cmd(2)[3:], f"run_dir={faulty}", *args]
    # (each restart attempt gets its own key space in torchrun's store: training.distributed._per_attempt_store)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = faulty / "checkpoints" / "step_0000010.pt"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert target.exists(), "the run never reached its step-10 checkpoint"
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)  # one rank dies without warning
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "resumed from step_" in out, "the restarted workers did not resume from a checkpoint"
    a, b = metrics(clean), metrics(faulty)
    assert [r["step"] for r in b] == list(range(1, 41))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


@pytest.mark.gpu
def test_cuda_graph_training_matches_plain_compile(tmp_path, data_overrides):
    """train.compile_mode=reduce-overhead (CUDA graphs, gradient accumulation over 2 micro-steps, validation in
    between) trains NSA exactly like the plain compiled model: same losses and validation losses to bf16 noise."""
    args = ["attention=nsa_tiny", "train.device=cuda", "train.compile=true", "train.steps=6", "train.val_interval=3"]
    run(tmp_path / "plain", args, data_overrides)
    run(tmp_path / "graphs", [*args, "train.compile_mode=reduce-overhead"], data_overrides)
    a, b = metrics(tmp_path / "plain"), metrics(tmp_path / "graphs")
    assert [r["step"] for r in b] == list(range(1, 7))
    for key in ("loss", "val_loss"):
        x = [r[key] for r in a if key in r]
        y = [r[key] for r in b if key in r]
        assert len(x) == len(y) > 0 and all(abs(p - q) <= 2e-3 * abs(p) for p, q in zip(x, y)), (key, x, y)
