"""Command line of prepare (data/pipeline.py does the work):

    python -m data.prepare                          # the default dataset (data=pystdlib)
    python -m data.prepare data=tinystories data.max_tokens=50_000_000

Hydra composes the project's root config (configs/config.yaml); only cfg.data is read. Prints the prepared
directory; bad input exits with a one-line error.
"""

from __future__ import annotations

from data.config import DataConfig, as_data_config
from data.errors import DataError
from data.pipeline import prepare


def _register_schema() -> None:
    """The root config composes on the trainer's registered schema; register it (it includes DataConfig)."""
    try:
        from training.config import register_configs
    except ImportError:  # data/ used without the trainer: a minimal schema with just the data group
        from dataclasses import field, make_dataclass

        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(name="base_config", node=make_dataclass(
            "Config", [("data", DataConfig, field(default_factory=DataConfig))]))
        return
    register_configs()


def main() -> None:
    import hydra

    _register_schema()

    @hydra.main(version_base="1.3", config_path="../configs", config_name="config")
    def _run(cfg) -> None:
        try:
            out = prepare(as_data_config(cfg.data))
        except DataError as e:
            raise SystemExit(f"error: {e}") from None
        print(out)

    _run()


if __name__ == "__main__":
    main()
