"""`DistillConfig`: a fine-tuning run's settings plus how the student learns from the teacher."""

from __future__ import annotations

import re
from dataclasses import dataclass

from slmkit.data.tasks import task_names
from slmkit.errors import SlmError
from slmkit.finetuning.config import FinetuneConfig
from slmkit.schema import setting

DISTILL_TASKS = task_names("distill")  # chat, completion, text, classification (data.tasks)
ON_POLICY_TASKS = task_names("on_policy")  # chat, completion: data with prompts for the student to answer
LOSSES = ("fkl", "rkl", "jsd", "tvd")  # distill.losses
HIDDEN_LOSSES = ("mse", "cosine")  # distill.intermediate
NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


# The checks a config runs when it is made live here, not beside the losses: those import torch, and the CLI
# reads this config to make its options (`slm --help` must not wait for torch).
def check_loss(loss: str, temperature: float, beta: float) -> None:
    if loss not in LOSSES:
        raise SlmError(f"--loss {loss}: choose one of {', '.join(LOSSES)}")
    if not temperature > 0:
        raise SlmError(f"--temperature {temperature}: must be above 0")
    if not 0 <= beta <= 1:
        raise SlmError(f"--beta {beta}: must be in [0, 1]")


def check_layer_map(text: str) -> None:
    """Refuse a malformed --layer-map before any model is opened."""
    if text.strip() != "auto":
        parse_layer_map(text)


def parse_layer_map(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        student, sep, teacher = item.strip().partition(":")
        if not sep or not NUMBER.fullmatch(student.strip()) or not NUMBER.fullmatch(teacher.strip()):
            raise SlmError(f"--layer-map {text!r}: expected auto or student:teacher layer pairs like 1:2,2:4,3:6")
        pairs.append((int(student), int(teacher)))
    students = [student for student, _ in pairs]
    if len(set(students)) != len(students):
        raise SlmError(f"--layer-map {text!r}: each student layer may be paired once")
    return pairs


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

    task: str | None = setting("chat | completion | text | classification [default: from the file].", None)
    loss: str = setting("fkl | rkl | jsd | tvd: the divergence from the teacher.", "fkl")
    temperature: float = setting("Softens both distributions (the loss is scaled by its square).", 1.0)
    alpha_ce: float = setting("Share of the hard-label cross-entropy in the loss.", 0.0)
    beta: float = setting("jsd: the teacher's weight in the mixture (0 is fkl, 1 rkl).", 0.5)
    teacher_cache: str | None = setting("Keep the teacher's top-k log-probabilities here, computed once; later "
                                        "epochs and runs read them.", None)
    top_k_logits: int = setting("Tokens per position the teacher cache keeps.", 100)
    hidden_loss: str | None = setting("mse | cosine: also match the teacher's hidden states (TinyBERT); projected "
                                      "when the widths differ.", None)
    layer_map: str = setting("auto (uniform, last block to last) or student:teacher pairs like 1:2,2:4,3:6 (0 is "
                             "the embeddings).", "auto")
    hidden_weight: float = setting("Weight of the hidden-state loss.", 1.0)
    attention_loss: bool = setting("Also match the mapped blocks' attention distributions (TinyBERT/MiniLM; same "
                                   "head count).", False)
    attention_weight: float = setting("Weight of the attention loss.", 1.0)
    on_policy_ratio: float = setting("Share of batches the student answers itself, scored by the teacher (GKD; "
                                     "chat/completion data).", 0.0)
    on_policy_max_new_tokens: int = setting("Longest on-policy answer.", 128)
    on_policy_temperature: float = setting("Sampling temperature of on-policy answers.", 1.0)

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
