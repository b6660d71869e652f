"""`finetune`: supervised fine-tuning, full or LoRA (chat, completion, text, classification, seq2seq). FinetuneConfig
(slmkit.finetuning.config) is `slm finetune`'s options, the finetune recipe stage's fields and what `slmkit.finetune`
takes; the run itself (checks before the load, resumable checkpoints, atomic output) is train.lifecycle's.

A training verb's progress factory gives an `update(step, total, facts)`: the step's facts (loss, tokens/s) come
with each step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import slmkit
from slmkit.finetuning.config import FinetuneConfig
from slmkit.logs import quiet_libraries
from slmkit.results import FinetuneResult
from slmkit.verbs.registry import ProgressFactory, Verb, register


def run(settings: FinetuneConfig, model: str, out: Path, *, progress: ProgressFactory, force: bool = False,
        data: str | Path | None = None) -> FinetuneResult:
    """Fine-tune `model` on `settings.data` into `out`. `data`: unused (the training file is `settings.data`)."""
    return trained(lambda update: slmkit.finetune(model, out, settings, progress=update, force=force),
                   "finetune", progress)


def trained(train: Callable, verb: str, progress: ProgressFactory) -> FinetuneResult:
    """`train(update)`'s FinetuneResult, the libraries quiet and the steps on `progress`'s bar."""
    quiet_libraries()  # a training run prints its one result, not the libraries' bars and warnings
    with progress(f"{verb}, step") as update:
        return train(update)


VERB = register(Verb("finetune", FinetuneConfig, run))
