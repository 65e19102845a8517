"""Test-wide settings: never touch the network, skip GPU tests without a GPU, shared config helpers."""

import os

# Before anything imports datasets / huggingface_hub / wandb.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    # the tests that read the Triton interpreter's child runs go last: the children (started when collection
    # ends, below) then run while this process works through everything else, instead of while it waits
    items.sort(key=lambda item: "interpreted_run" in getattr(item, "fixturenames", ()))  # stable
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    # the Triton interpreter's child runs take minutes each: start them now, beside the rest of the suite
    from tests.interpreted import start_for

    start_for(session.items)


def pytest_sessionfinish(session, exitstatus):
    from tests.interpreted import stop_all

    stop_all()


def set_tiles(monkeypatch, names, sizes=None, **changes) -> None:
    """For one test, set `changes` in kernels.triton_common.GPU_TILES[name][size] for every name and size (None: every
    entry the kernel has, "d64" included, which would otherwise override "small"'s value at head dims up to 64)."""
    from kernels.triton_common import GPU_TILES

    for name in names:
        for size in GPU_TILES[name] if sizes is None else sizes:
            for key, value in changes.items():
                monkeypatch.setitem(GPU_TILES[name][size], key, value)


@pytest.fixture
def cuda_gen() -> torch.Generator:
    """A CUDA generator with a fresh random seed every run (GPU tests print it when they fail)."""
    return torch.Generator(device="cuda").manual_seed(random.SystemRandom().randrange(2**31))


def compose_config(overrides: list[str]):
    """The root Hydra config with overrides, as train.py would see it."""
    from hydra import compose, initialize_config_dir

    from training.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(scope="session")
def data_overrides(tmp_path_factory) -> list[str]:
    """Overrides that point the default offline dataset at a session-wide folder with a small token budget,
    so it is prepared once for all tests."""
    root = tmp_path_factory.mktemp("data_cache")
    return [f"data.root={root}", "data.max_tokens=300000", "data.num_proc=1"]
