"""`DistillationTrainer`: the fine-tuning trainer with the teacher's distributions in the loss.

Per batch the teacher (frozen, in eval mode) reads the same inputs as the student, packed rows' position ids
included. A language model is compared at the positions with a label: the next-token distributions before
each label that is not -100 (so a chat distils on the assistant's tokens only, as it fine-tunes); a
classifier at every row. The loss is alpha_ce x the student's own cross-entropy + (1 - alpha_ce) x the
divergence (distill.losses), logged apart as `kd_loss` and `ce_loss`.

With a teacher cache (distill.cache) the teacher's top-k comes from the cache, built before the first step
over the training and evaluation rows (by the main process; the others wait), and the teacher is not run
during training at all.
"""

from __future__ import annotations

import torch

from dataclasses import dataclass
from pathlib import Path

from slmkit.distill.cache import ROW_KEY, TeacherCache, WithRowIndex, cache_key
from slmkit.distill.losses import compared, distillation_loss
from slmkit.errors import SlmError
from slmkit.train.base import SlmTrainer


@dataclass(frozen=True)
class CacheSettings:
    root: str
    top_k: int
    teacher_spec: str
    teacher_path: Path | None
    tokenizer: object


class DistillationTrainer(SlmTrainer):
    def __init__(self, *args, teacher, loss: str, temperature: float, alpha_ce: float, beta: float,
                 cache: CacheSettings | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.kd = {"loss": loss, "temperature": temperature, "beta": beta}
        self.alpha_ce = alpha_ce
        # The loss below is a mean over this batch's positions: the Trainer divides it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._parts: dict[str, list[float]] = {"kd_loss": [], "ce_loss": []}
        self.cache = self._open_cache(cache, temperature) if cache is not None else None

    def _open_cache(self, settings: CacheSettings, temperature: float) -> TeacherCache:
        train, held_out = list(self.train_dataset), list(self.eval_dataset or [])
        rows = train + held_out
        key, made_from = cache_key(settings.teacher_spec, settings.teacher_path, settings.tokenizer, rows,
                                   temperature, settings.top_k)
        cache = TeacherCache(settings.root, key, made_from)
        if self.is_world_process_zero():
            self.teacher.to(self.args.device)
            cache.build(self.teacher, rows, self.data_collator, self.args.device)
        self.accelerator.wait_for_everyone()
        self.teacher.to("cpu")  # not run again: the cache answers for it
        self.train_dataset = [{**row, ROW_KEY: index} for index, row in enumerate(train)]
        self.eval_dataset = [{**row, ROW_KEY: len(train) + index} for index, row in enumerate(held_out)]
        self.data_collator = WithRowIndex(self.data_collator)
        return cache

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cached_rows = inputs.pop(ROW_KEY, None)
        outputs = model(**inputs)
        student_rows = compared(outputs.logits, inputs.get("labels"))
        if self.cache is not None:
            teacher_rows = self.cache.lookup(cached_rows.tolist(), outputs.logits.device)
            if len(teacher_rows.ids) != len(student_rows):
                raise SlmError(f"the teacher cache {self.cache.directory} holds {len(teacher_rows.ids)} positions "
                               f"for this batch and it has {len(student_rows)}; remove that directory to rebuild it")
        else:
            teacher_rows = compared(self._teacher_logits(inputs, outputs.logits.device), inputs.get("labels"))
        kd = distillation_loss(student_rows, teacher_rows, **self.kd)
        loss = kd if self.alpha_ce == 0 else self.alpha_ce * outputs.loss + (1 - self.alpha_ce) * kd
        if model.training:
            self._parts["kd_loss"].append(float(kd.detach()))
            if outputs.loss is not None:
                self._parts["ce_loss"].append(float(outputs.loss.detach()))
        return (loss, outputs) if return_outputs else loss

    def _teacher_logits(self, inputs: dict, device) -> torch.Tensor:
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            return self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: the mean of each part since the last one
            for name, values in self._parts.items():
                if values:
                    logs[name] = sum(values) / len(values)
                    values.clear()
        super().log(logs, *args, **kwargs)
