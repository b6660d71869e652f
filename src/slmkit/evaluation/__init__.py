"""Measure a model: perplexity, multiple choice, LAMBADA, classification, speed."""

from slmkit.evaluation.config import TASKS, BenchConfig, EvalConfig

__all__ = ["TASKS", "BenchConfig", "EvalConfig", "evaluate", "choice_accuracy", "lambada_accuracy",
           "classification_accuracy"]

_LAZY = {"evaluate": "run", "choice_accuracy": "choice", "lambada_accuracy": "lambada",
         "classification_accuracy": "classification"}


def __getattr__(name: str):
    """The measurements import torch: only when one runs, not when a CLI reads a config to make its options
    (`slm --help` stays instant)."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"slmkit.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'slmkit.evaluation' has no attribute {name!r}")
