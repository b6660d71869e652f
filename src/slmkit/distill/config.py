"""`DistillConfig`: a fine-tuning run's settings plus how the student learns from the teacher."""

from __future__ import annotations

from dataclasses import dataclass

from slmkit.distill.losses import check_loss
from slmkit.errors import SlmError
from slmkit.finetune.config import FinetuneConfig

DISTILL_TASKS = ("chat", "completion", "text", "classification")


@dataclass
class DistillConfig(FinetuneConfig):
    """FinetuneConfig's settings (data, steps, batch, LoRA, resume, device), and:

    Args:
        loss: fkl | rkl | jsd | tvd between the teacher's and the student's distributions (distill.losses).
        temperature: both softened by it; the loss is scaled by its square.
        alpha_ce: the share of the hard-label cross-entropy in the loss (0: distillation only).
        beta: jsd's weight on the teacher in the mixture.
        teacher_cache: a directory for the teacher's top-k log-probabilities, computed once over the data and
            read by every later epoch and run instead of running the teacher (None: the teacher runs live).
        top_k_logits: how many of the teacher's likeliest tokens the cache keeps per position.

    Example: `slmkit.distill("teacher", "student", "out/kd", DistillConfig(data="wiki.txt", max_steps=500))`.
    """

    loss: str = "fkl"
    temperature: float = 1.0
    alpha_ce: float = 0.0
    beta: float = 0.5
    teacher_cache: str | None = None
    top_k_logits: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        check_loss(self.loss, self.temperature, self.beta)
        if not 0 <= self.alpha_ce <= 1:
            raise SlmError(f"--alpha-ce {self.alpha_ce}: must be in [0, 1]")
        if self.top_k_logits < 1:
            raise SlmError(f"--top-k-logits {self.top_k_logits}: must be at least 1")
        if self.task is not None and self.task not in DISTILL_TASKS:
            raise SlmError(f"--task {self.task}: distillation takes {', '.join(DISTILL_TASKS)}")
