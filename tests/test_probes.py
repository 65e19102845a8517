"""Retrieval probes (training/probes.py): the documents, the scored tokens, the loss the trainer logs."""

import math

import pytest
import torch

from data import load_tokenizer, prepare
from data.synthetic import generate
from model import GPT
from tests.conftest import compose_config
from tests.test_train import metrics, run
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
    for kind, (x, y) in probes.items():
        assert x.shape == y.shape == (3, SEQ) and x.dtype == y.dtype == torch.long
        for i in range(3):
            scored = y[i] != -1
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
    x, y = build_probes(["passkey"], 6, prepare(cfg.data), SEQ)["passkey"]
    with torch.no_grad():
        logits, _ = model(x)
    scored = y != -1
    expected = torch.nn.functional.cross_entropy(logits[scored].float(), y[scored]).item()
    assert rows[-1]["val_probe_passkey"] == pytest.approx(expected, rel=1e-4)
