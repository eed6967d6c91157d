"""Logging fan-out: console (rich), metrics.jsonl + summary.json, and Weights & Biases."""

from metarun.logging.logger import Logger, Sink

__all__ = ["Logger", "Sink"]
