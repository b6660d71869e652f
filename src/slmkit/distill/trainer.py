"""`DistillationTrainer`: the fine-tuning trainer with the teacher's distributions in the loss.

Per batch the teacher (frozen, in eval mode) reads the same inputs as the student, packed rows' position ids
included. A language model is compared at the positions with a label: the next-token distributions before
each label that is not -100 (so a chat distils on the assistant's tokens only, as it fine-tunes); a
classifier at every row. The loss is alpha_ce x the student's own cross-entropy + (1 - alpha_ce) x the
divergence (distill.losses), logged apart as `kd_loss` and `ce_loss`.
"""

from __future__ import annotations

import torch

from slmkit.data.training import IGNORE
from slmkit.distill.losses import distillation_loss
from slmkit.train.base import SlmTrainer


class DistillationTrainer(SlmTrainer):
    def __init__(self, *args, teacher, loss: str, temperature: float, alpha_ce: float, beta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.kd = {"loss": loss, "temperature": temperature, "beta": beta}
        self.alpha_ce = alpha_ce
        # The loss below is a mean over this batch's positions: the Trainer divides it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._parts: dict[str, list[float]] = {"kd_loss": [], "ce_loss": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        teacher_device = next(self.teacher.parameters()).device
        if teacher_device != outputs.logits.device:
            self.teacher.to(outputs.logits.device)
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        student_rows, teacher_rows = compared_rows(outputs.logits, teacher_logits, inputs.get("labels"))
        kd = distillation_loss(student_rows, teacher_rows, **self.kd)
        loss = kd if self.alpha_ce == 0 else self.alpha_ce * outputs.loss + (1 - self.alpha_ce) * kd
        if model.training:
            self._parts["kd_loss"].append(float(kd.detach()))
            if outputs.loss is not None:
                self._parts["ce_loss"].append(float(outputs.loss.detach()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: the mean of each part since the last one
            for name, values in self._parts.items():
                if values:
                    logs[name] = sum(values) / len(values)
                    values.clear()
        super().log(logs, *args, **kwargs)


def compared_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The [rows, vocab] logits of both models where they are compared: a classifier's every row; a language
    model's positions whose next token has a label (logits at t predict the token at t + 1)."""
    if student_logits.dim() == 2:
        return student_logits, teacher_logits
    if labels is None:
        return student_logits.flatten(0, 1), teacher_logits.flatten(0, 1)
    scored = labels[:, 1:] != IGNORE
    return student_logits[:, :-1][scored], teacher_logits[:, :-1][scored]
