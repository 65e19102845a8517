"""Evaluate a checkpoint: python eval.py checkpoint=RUN_DIR tasks=[niah,passkey,longbench] out_dir=OUT

Tasks, config keys and outputs: docs/eval.md. Bad input exits with a one-line error; results of finished tasks
are kept in OUT/results.json.
"""

import hydra
from omegaconf import DictConfig

from data.errors import DataError
from evaluation.config import register_configs, to_eval_config
from evaluation.loading import EvalError
from evaluation.runner import evaluate

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(to_eval_config(cfg))
    except (EvalError, DataError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
