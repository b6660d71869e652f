"""`DistillConfig`: a fine-tuning run's settings plus how the student learns from the teacher."""

from __future__ import annotations

from dataclasses import dataclass

from slmkit.distill.intermediate import HIDDEN_LOSSES, check_layer_map
from slmkit.distill.losses import check_loss
from slmkit.errors import SlmError
from slmkit.finetune.config import FinetuneConfig

DISTILL_TASKS = ("chat", "completion", "text", "classification")
ON_POLICY_TASKS = ("chat", "completion")  # data with prompts for the student to answer


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
        hidden_loss: mse | cosine between the student's and the teacher's hidden states at `layer_map`'s pairs
            (None: none), weighted by hidden_weight and added to the loss (distill.intermediate).
        layer_map: auto, or student:teacher layer pairs (`1:2,2:4,3:6`; 0 is the embeddings).
        attention_loss: add KL(teacher || student) of the mapped blocks' attention distributions, weighted by
            attention_weight (TinyBERT/MiniLM; the student needs the teacher's head count).
        on_policy_ratio: the share of training batches whose answers the student samples itself for the
            batch's prompts, scored by the teacher (GKD's lambda; chat and completion data, unpacked).
        on_policy_max_new_tokens / on_policy_temperature: how long and how hot those answers are sampled.

    Example: `slmkit.distill("teacher", "student", "out/kd", DistillConfig(data="wiki.txt", max_steps=500))`.
    """

    loss: str = "fkl"
    temperature: float = 1.0
    alpha_ce: float = 0.0
    beta: float = 0.5
    teacher_cache: str | None = None
    top_k_logits: int = 100
    hidden_loss: str | None = None
    layer_map: str = "auto"
    hidden_weight: float = 1.0
    attention_loss: bool = False
    attention_weight: float = 1.0
    on_policy_ratio: float = 0.0
    on_policy_max_new_tokens: int = 128
    on_policy_temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_loss(self.loss, self.temperature, self.beta)
        if not 0 <= self.alpha_ce <= 1:
            raise SlmError(f"--alpha-ce {self.alpha_ce}: must be in [0, 1]")
        if self.top_k_logits < 1:
            raise SlmError(f"--top-k-logits {self.top_k_logits}: must be at least 1")
        if self.hidden_loss is not None and self.hidden_loss not in HIDDEN_LOSSES:
            raise SlmError(f"--hidden-loss {self.hidden_loss}: choose one of {', '.join(HIDDEN_LOSSES)}")
        weights = {"--hidden-weight": self.hidden_weight, "--attention-weight": self.attention_weight}
        for flag, weight in weights.items():
            if not weight > 0:
                raise SlmError(f"{flag} {weight}: must be above 0")
        check_layer_map(self.layer_map)
        if self.layer_map.strip() != "auto" and not self.distills_internals:
            raise SlmError("--layer-map pairs layers for --hidden-loss or --attention-loss; add one of them")
        if self.distills_internals and self.teacher_cache:
            raise SlmError("--teacher-cache keeps the teacher's output distributions only; --hidden-loss and "
                           "--attention-loss need the live teacher (drop the cache or those losses)")
        if not 0 <= self.on_policy_ratio <= 1:
            raise SlmError(f"--on-policy-ratio {self.on_policy_ratio}: must be in [0, 1]")
        if self.on_policy_max_new_tokens < 1:
            raise SlmError(f"--on-policy-max-new-tokens {self.on_policy_max_new_tokens}: must be at least 1")
        if not self.on_policy_temperature > 0:
            raise SlmError(f"--on-policy-temperature {self.on_policy_temperature}: must be above 0")
        if self.on_policy_ratio > 0 and self.packing:
            raise SlmError("--on-policy-ratio replaces each row's answer with the student's; it cannot with "
                           "--packing (drop one of them)")
        if self.on_policy_ratio > 0 and self.teacher_cache:
            raise SlmError("--teacher-cache holds the teacher's view of the data's answers; on-policy answers are "
                           "new each time and need the live teacher (drop the cache or --on-policy-ratio)")
        if self.task is not None and self.task not in DISTILL_TASKS:
            raise SlmError(f"--task {self.task}: distillation takes {', '.join(DISTILL_TASKS)}")

    @property
    def distills_internals(self) -> bool:
        """Whether the teacher's hidden states or attentions are distilled too."""
        return self.hidden_loss is not None or self.attention_loss
