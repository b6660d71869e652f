"""What every training run does, whatever feeds it (train.lifecycle: a data file; distillation.qat: its
calibration sequences): its settings become transformers' TrainingArguments, and one Trainer is made over its
rows and trained.

- `trainer_arguments`: the config's fields that declare a TrainingArguments name (`schema.setting(trainer=...)`)
  fill it as they are; the values a run derives from several settings (or fixes) are passed beside them; the
  device and dtype become the Trainer's precision flags;
- `computes_bfloat16`: whether a device multiplies bfloat16 natively, where autocasting to it pays;
- `TrainingRun`: the Trainer (SlmTrainer or a subclass) over the rows, with the progress callback and the run's
  own callbacks, trained (resumed from its newest checkpoint when asked) and timed, and its loss curve.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from slmkit.errors import SlmError
from slmkit.models.devices import resolve_device
from slmkit.train.base import SlmTrainer, TrainProgress, loss_curve, training_arguments


def declared_arguments(config) -> dict:
    """The TrainingArguments `config`'s fields fill, by the names their `trainer` metadata gives."""
    return {name: getattr(config, field.name) for field in dataclasses.fields(config)
            for name in field.metadata.get("trainer", ())}


def trainer_arguments(output_dir: str | Path, config, *, device, dtype: str, **derived) -> TrainingArguments:
    """The TrainingArguments of a run of `config` writing into `output_dir`: the fields `config` declares, the
    `derived` values (an argument given by both is a TypeError: each has one source), and the precision of
    `dtype` on `device` (`precision`)."""
    return training_arguments(str(output_dir), **declared_arguments(config), **derived, **precision(device, dtype))


def precision(device, dtype: str) -> dict:
    """use_cpu / bf16 / fp16 for training on `device` (a --device value, or a torch.device resolved already) in
    `dtype`; auto: bfloat16 mixed precision on a GPU that has it, else float32."""
    device = resolve_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float16" and device.type == "cpu":
        raise SlmError("--dtype float16 trains on a GPU only; on the CPU use float32 or bfloat16")
    return {"use_cpu": device.type == "cpu", "bf16": dtype == "bfloat16", "fp16": dtype == "float16"}


def computes_bfloat16(device) -> bool:
    """Whether `device` multiplies bfloat16 matrices natively: a CUDA GPU that has it, a CPU with AVX512-BF16 or
    AMX (2.4x float32's matmul speed measured on an AMD EPYC's 2 cores); elsewhere bfloat16 is emulated."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


class TrainingRun:
    """One Trainer of `trainer_class` training `model` on the `train` rows (batched by `collator`), evaluated on
    `held_out`; `extra`: the keyword arguments the class takes beyond the Trainer's (a teacher).

    Example: `run = TrainingRun(SlmTrainer, model, args, train=rows, held_out=rows[:8], collator=collate,
    tokenizer=tokenizer)`, then `run.train()`; `run.trainer` is there for what the caller does around training
    (an evaluation before it, the run's own files), `run.curve` and `run.seconds` after it.
    """

    def __init__(self, trainer_class: type[SlmTrainer], model, args: TrainingArguments, *, train: list[dict],
                 held_out: list[dict], collator, tokenizer, progress: TrainProgress | None = None,
                 callbacks: Iterable[TrainerCallback] = (), **extra):
        self.trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                                     data_collator=collator, processing_class=tokenizer, progress=progress, **extra)
        for callback in callbacks:
            self.trainer.add_callback(callback)
        self.seconds = 0.0

    def train(self, *, resume: bool = False) -> None:
        """Train to the end, or until SIGTERM (`trainer.stopped_by_signal`); `resume`: from the newest checkpoint
        in the output directory."""
        started = time.perf_counter()
        self.trainer.train(resume_from_checkpoint=True if resume else None)
        self.seconds = time.perf_counter() - started

    @property
    def curve(self) -> dict:
        """The loss curve logged so far (train.base.loss_curve), with the parts the trainer class names; an
        evaluation after training adds its point."""
        return loss_curve(self.trainer.state.log_history, self.trainer.logged_parts)
