"""Train a GPT with full or native sparse attention.

python train.py                                   # tiny model, offline default data, CPU or GPU
python train.py attention=nsa train.steps=200     # any field can be overridden
torchrun --standalone --nproc_per_node=8 train.py experiment=small_fineweb
"""

import hydra
from omegaconf import DictConfig

from training.config import register_configs
from training.trainer import train

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
