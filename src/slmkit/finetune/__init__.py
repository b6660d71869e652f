"""Supervised fine-tuning, full or LoRA: chat, completion, text, classification and seq2seq."""

from slmkit.finetune.config import TASKS, FinetuneConfig
from slmkit.finetune.run import FinetuneResult, checkpoint_dir, finetune

__all__ = ["TASKS", "FinetuneConfig", "FinetuneResult", "checkpoint_dir", "finetune"]
