"""Retrieval probes (training/probes.py): the documents, the scored tokens, the loss the trainer logs."""

import math
import os
import subprocess
import sys

import pytest
import torch

from data import load_tokenizer, prepare
from data.synthetic import generate
from model import GPT
from model.attention.nsa import needle_block_hits, nsa_layers
from tests.conftest import REPO, compose_config
from tests.test_train import FAST, metrics, run
from training import checkpoint as ckpt_io
from training.config import to_dataclass
from training.probes import PROBE_SEED, build_probes, probe_batches

SEQ = 256


@pytest.fixture(scope="module")
def dataset_dir(data_overrides):
    return prepare(to_dataclass(compose_config([*data_overrides, "run_dir=x"])).data)


def test_probe_documents_score_exactly_the_final_answer(dataset_dir):
    tok = load_tokenizer(dataset_dir)
    probes = build_probes(["passkey", "needle"], 3, dataset_dir, SEQ)
    assert set(probes) == {"passkey", "needle"}
    for kind, (x, y, needle, query) in probes.items():
        assert x.shape == y.shape == (3, SEQ) and x.dtype == y.dtype == torch.long
        for i in range(3):
            scored = y[i] != -1
            assert query[i] == scored.nonzero().min()  # the position predicting the answer's first token
            assert 0 <= needle[i, 0] < needle[i, 1] <= query[i]  # the needle lies before it
            inner = scored[:-1]
            assert torch.equal(y[i][:-1][inner], x[i][1:][inner])  # y holds x's next token where scored
            if kind == "passkey":  # no haystack: the document is the generator's, seed for seed
                doc = generate(kind, tok, SEQ + 1, seed=PROBE_SEED + i)
                assert x[i].tolist() == doc.tokens[:-1]
                assert tok.decode(y[i][scored].tolist()) == doc.answer
            assert scored.sum() >= 1 and scored.nonzero().max() == SEQ - 1  # the answer ends the document
    # kinds hiding needles in real text get the validation text, so their documents differ from filler ones
    assert not torch.equal(probes["needle"][0], probes["passkey"][0])


def test_bad_probe_settings_fail_clearly(dataset_dir):
    with pytest.raises(ValueError, match=r"train.val_probes=\['passky'\] has unknown kinds"):
        build_probes(["passky"], 4, dataset_dir, SEQ)
    with pytest.raises(ValueError, match="train.val_probe_samples=0"):
        build_probes(["passkey"], 0, dataset_dir, SEQ)
    with pytest.raises(ValueError, match="does not fit in model.max_seq_len=8"):
        build_probes(["passkey"], 2, dataset_dir, 8)
    assert build_probes([], 0, dataset_dir, SEQ) == {}


def test_ranks_split_the_samples_once_each():
    """With 2 ranks and micro-batches of 4, 7 samples are scored exactly once between the ranks; padding rows
    score nothing, and both ranks run the same number of batches (FSDP2 forwards are collective)."""
    n, micro, world = 7, 4, 2
    x = torch.arange(n)[:, None].repeat(1, 5)
    y = torch.full((n, 5), -1)
    y[:, -1] = 1
    seen, batches = [], []
    for rank in range(world):
        for xb, yb in probe_batches(x, y, micro, rank, world):
            assert xb.shape == yb.shape == (micro, 5)
            batches.append(rank)
            scored = (yb != -1).any(1)
            seen.extend(xb[scored, 0].tolist())
    assert sorted(seen) == list(range(n))
    assert batches.count(0) == batches.count(1) == 1


def test_trainer_logs_the_probe_loss_of_its_model(tmp_path, data_overrides):
    """The logged val_probe_passkey equals the answer-token cross-entropy of the final model, recomputed here."""
    run(tmp_path, ["train.steps=6", f"model.max_seq_len={SEQ}", "train.batch_tokens=1024",
                   "train.val_tokens=1024", "train.val_probes=[passkey]", "train.val_probe_samples=6"],
        data_overrides)
    rows = [r for r in metrics(tmp_path) if "val_loss" in r]
    assert [r["step"] for r in rows] == [5, 6]
    assert all(math.isfinite(r["val_probe_passkey"]) and r["val_probe_passkey"] > 0 for r in rows)

    ckpt = ckpt_io.load_checkpoint(ckpt_io.list_checkpoints(tmp_path)[-1])
    cfg = to_dataclass(compose_config([f"run_dir={tmp_path}", *data_overrides, f"model.max_seq_len={SEQ}"]))
    cfg.model.vocab_size = ckpt["config"]["model"]["vocab_size"]
    model = GPT(cfg.model, cfg.attention)
    model.load_state_dict(ckpt["model"])
    model.eval()
    x, y, _, _ = build_probes(["passkey"], 6, prepare(cfg.data), SEQ)["passkey"]
    with torch.no_grad():
        logits, _ = model(x)
    scored = y != -1
    expected = torch.nn.functional.cross_entropy(logits[scored].float(), y[scored]).item()
    assert rows[-1]["val_probe_passkey"] == pytest.approx(expected, rel=1e-4)


def test_trainer_logs_how_often_nsa_selects_the_needle(tmp_path, data_overrides):
    """train.val_probe_selection on an NSA model: the logged val_probe_passkey_selected equals the fraction of
    (layer, KV head) pairs whose blocks, chosen at each document's answer query, hold its needle, recomputed here
    from the final checkpoint; full attention logs none."""
    overrides = ["train.steps=6", f"model.max_seq_len={SEQ}", "train.batch_tokens=1024", "train.val_tokens=1024",
                 "train.val_probes=[passkey]", "train.val_probe_samples=5", "train.val_probe_selection=true"]
    run(tmp_path, [*overrides, "attention=nsa_tiny"], data_overrides)
    logged = [r["val_probe_passkey_selected"] for r in metrics(tmp_path) if "val_loss" in r]
    assert len(logged) == 2 and all(0 <= v <= 1 for v in logged)
    assert logged[-1] == pytest.approx(recomputed_selection(tmp_path, data_overrides), abs=1e-12)

    full = tmp_path / "full"
    run(full, overrides, data_overrides)
    assert not any("val_probe_passkey_selected" in r for r in metrics(full))


def recomputed_selection(run_dir, data_overrides, n: int = 5) -> float:
    """val_probe_passkey_selected of the run's final checkpoint, from one plain forward of the probes."""
    ckpt = ckpt_io.load_checkpoint(ckpt_io.list_checkpoints(run_dir)[-1])
    cfg = to_dataclass(compose_config([f"run_dir={run_dir}", *data_overrides, f"model.max_seq_len={SEQ}",
                                       "attention=nsa_tiny"]))
    cfg.model.vocab_size = ckpt["config"]["model"]["vocab_size"]
    model = GPT(cfg.model, cfg.attention)
    model.load_state_dict(ckpt["model"])
    model.eval()
    x, _, needle, query = build_probes(["passkey"], n, prepare(cfg.data), SEQ)["passkey"]
    layers = nsa_layers(model)
    for layer in layers:
        layer.record_selection = True
    with torch.no_grad():
        model(x)
    fractions = [torch.stack([needle_block_hits(layer.selection[i, query[i]], *needle[i].tolist(),
                                                cfg.attention.select_block) for layer in layers]).double().mean()
                 for i in range(n)]
    return float(torch.stack(fractions).mean())


def test_two_ranks_measure_the_needle_selection_once_each(tmp_path, data_overrides):
    """DDP on 2 CPU processes (gloo): each probe document is measured by one rank (5 documents, micro-batches
    padded) and the logged mean equals the recomputation from the final checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*FAST, *data_overrides, "train.steps=2", f"model.max_seq_len={SEQ}", "train.batch_tokens=2048",
            "train.val_tokens=1024", "attention=nsa_tiny", "train.val_probes=[passkey]",
            "train.val_probe_samples=5", "train.val_probe_selection=true", f"run_dir={tmp_path}"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(REPO / "train.py"), *args], check=True, env=env, cwd=tmp_path)
    logged = [r["val_probe_passkey_selected"] for r in metrics(tmp_path) if "val_loss" in r]
    assert logged and logged[-1] == pytest.approx(recomputed_selection(tmp_path, data_overrides), abs=1e-12)


@pytest.mark.gpu
def test_needle_selection_under_cuda_graphs(tmp_path, data_overrides):
    """On a GPU with torch.compile and CUDA graphs (what the gpu-small preset trains with), the eager selection
    forward runs between graph replays, and its value follows the CPU recomputation (bf16 against float32 moves
    near-tied picks, hence the loose bound; the exact check is the CPU test above)."""
    run(tmp_path, ["train.steps=6", f"model.max_seq_len={SEQ}", "train.batch_tokens=1024", "train.val_tokens=1024",
                   "attention=nsa_tiny", "train.val_probes=[passkey]", "train.val_probe_samples=5",
                   "train.val_probe_selection=true", "train.compile=true", "train.compile_mode=reduce-overhead"],
        data_overrides)
    rows = [r for r in metrics(tmp_path) if "val_loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["val_probe_passkey"]) for r in rows)
    assert rows[-1]["val_probe_passkey_selected"] == pytest.approx(recomputed_selection(tmp_path, data_overrides),
                                                                   abs=0.25)
