"""Attention registry: `attention.name` in the config picks the class that every GPT layer uses."""

from __future__ import annotations

from collections.abc import Callable

from model.attention.base import Attention
from model.config import AttentionConfig, ModelConfig

ATTENTION_REGISTRY: dict[str, type[Attention]] = {}


def register_attention(name: str) -> Callable[[type[Attention]], type[Attention]]:
    def add(cls: type[Attention]) -> type[Attention]:
        if name in ATTENTION_REGISTRY:
            raise ValueError(f"attention {name!r} is registered twice")
        ATTENTION_REGISTRY[name] = cls
        return cls

    return add


def attention_class(attn_cfg: AttentionConfig) -> type[Attention]:
    if attn_cfg.name not in ATTENTION_REGISTRY:
        raise ValueError(f"attention.name={attn_cfg.name!r} is unknown: choose one of {sorted(ATTENTION_REGISTRY)}")
    return ATTENTION_REGISTRY[attn_cfg.name]


def build_attention(model_cfg: ModelConfig, attn_cfg: AttentionConfig, layer_idx: int) -> Attention:
    return attention_class(attn_cfg)(model_cfg, attn_cfg, layer_idx)


# Importing the implementations registers them.
from model.attention import full, nsa  # noqa: E402,F401

__all__ = ["ATTENTION_REGISTRY", "Attention", "attention_class", "build_attention", "register_attention"]
