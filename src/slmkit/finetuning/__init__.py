"""Supervised fine-tuning, full or LoRA: chat, completion, text, classification and seq2seq."""

from slmkit.finetuning.config import TASKS, FinetuneConfig
from slmkit.models.checkpoint import checkpoint_dir
from slmkit.results import FinetuneResult

__all__ = ["TASKS", "FinetuneConfig", "FinetuneResult", "checkpoint_dir", "finetune"]


def __getattr__(name: str):
    """The training run imports torch and transformers: only when it is used, not when a CLI reads the config
    to make its options (`slm --help` stays instant)."""
    if name == "finetune":
        from slmkit.finetuning import run

        return run.finetune
    raise AttributeError(f"module 'slmkit.finetuning' has no attribute {name!r}")
