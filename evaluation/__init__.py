"""Evaluation of trained checkpoints: long-context tasks (perplexity by position, passkey, needle in a haystack,
RULER, MQAR, LongBench) on any registered attention type. Entry point: eval.py; documentation: docs/eval.md."""
