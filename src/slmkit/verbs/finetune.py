"""`finetune`: supervised fine-tuning, full or LoRA (chat, completion, text, classification, seq2seq). FinetuneConfig
(slmkit.finetuning.config) is `slm finetune`'s options, the finetune recipe stage's fields and what `slmkit.finetune`
takes; the run itself (checks before the load, resumable checkpoints, atomic output) is train.lifecycle's.

A training verb's progress factory gives an `update(step, total, facts)`: the step's facts (loss, tokens/s) come
with each step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from slmkit.finetuning.config import FinetuneConfig
from slmkit.results import StageResult
from slmkit.verbs.registry import ProgressFactory, Verb, register


def run(settings: FinetuneConfig, model: str, out: Path, *, progress: ProgressFactory, force: bool = False,
        data: str | Path | None = None) -> StageResult:
    """Fine-tune `model` on `settings.data` into `out`. `data`: unused (the training file is `settings.data`)."""
    import slmkit

    return trained(lambda update: slmkit.finetune(model, out, settings, progress=update, force=force),
                   "finetune", progress)


def trained(train: Callable, verb: str, progress: ProgressFactory) -> StageResult:
    """`train(update)`'s FinetuneResult as a StageResult: the metrics, the model's directory, and in `record` what
    the run did: `task`, `completed` (False: SIGTERM stopped it at a checkpoint), `step`, `checkpoints`, `curve`
    (the loss curve), `heldout` (a classifier's held-back rows, or None) and `main_process` (under torchrun, the
    process that reports)."""
    from slmkit.logs import quiet_libraries
    from slmkit.train.lifecycle import HELD_BACK_FILE

    quiet_libraries()  # a training run prints its one result, not the libraries' bars and warnings
    with progress(f"{verb}, step") as update:
        result = train(update)
    held_back = Path(result.out) / HELD_BACK_FILE
    return StageResult(result.metrics, Path(result.out), {
        "task": result.task, "completed": result.completed, "step": result.step, "checkpoints": result.checkpoints,
        "curve": result.curve, "heldout": held_back if held_back.is_file() else None,
        "main_process": result.main_process})


VERB = register(Verb("finetune", FinetuneConfig, run))
