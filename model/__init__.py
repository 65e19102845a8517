"""GPT with swappable attention (full / NSA)."""

from model.config import AttentionConfig, ModelConfig
from model.flops import flops_per_token, num_params
from model.gpt import GPT

__all__ = ["GPT", "AttentionConfig", "ModelConfig", "flops_per_token", "num_params"]
