"""Data loaders with line-numbered errors."""

from slmkit.data.loaders import (ChoiceItem, infer_task, load_choice, load_labeled, load_lambada, load_text,
                                 read_jsonl)

__all__ = ["ChoiceItem", "infer_task", "load_choice", "load_labeled", "load_lambada", "load_text", "read_jsonl"]
