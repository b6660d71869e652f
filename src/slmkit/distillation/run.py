"""`slmkit.distill`: train a student on a data file with a teacher's distributions in the loss.

The run is a fine-tune's (train.lifecycle through finetune.run's FineTuning: the same checks, resumable
checkpoints, LoRA, devices, output) with a DistillationTrainer, once the teacher is open and its token ids are
checked against the student's. The teacher is opened in float32 on the CPU like the student; the trainer
moves it beside the student on the first batch.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.data.loaders import infer_task, load_text
from slmkit.data.tasks import Task
from slmkit.data.training import pad_token_id
from slmkit.distillation.config import DISTILL_TASKS, ON_POLICY_TASKS, DistillConfig
from slmkit.distillation.intermediate import check_attention, resolve_layer_map, without_attention_dropout
from slmkit.distillation.trainer import CacheSettings, DistillationTrainer, Internals, OnPolicy
from slmkit.distillation.vocabulary import check_same_vocabulary
from slmkit.errors import SlmError
from slmkit.finetuning.run import FineTuning
from slmkit.models import loading
from slmkit.results import FinetuneResult
from slmkit.train.base import TrainProgress
from slmkit.train.lifecycle import train_model

PROBE_CHARS = 2000  # of the training text, tokenized by both models to compare their ids


class Distillation(FineTuning):
    """A fine-tune whose trainer learns from `teacher` (a spec): the teacher is read beside the data (`out`
    must not replace it, a resume must name the same one), and opened once the student is."""

    stage = "distill"
    tasks = DISTILL_TASKS

    def __init__(self, config: DistillConfig, teacher: str):
        super().__init__(config)
        self.teacher = teacher

    @property
    def models(self) -> tuple[str, ...]:
        return (self.teacher,)

    @property
    def settings(self) -> dict:
        return {"teacher": self.teacher}

    def check(self) -> None:
        if self.config.on_policy_ratio > 0:
            _check_prompts(self.config)

    def prepare(self, lm, task: Task, labels) -> tuple[type, dict]:
        config = self.config
        teacher = _open_teacher(self.teacher, task, labels, config)
        check_same_vocabulary(teacher.tokenizer, lm.tokenizer, _vocab_size(teacher.model), _vocab_size(lm.model),
                              [_probe_text(config.data)])
        cache = None
        if config.teacher_cache:
            cache = CacheSettings(config.teacher_cache, config.top_k_logits, self.teacher, teacher.path,
                                  teacher.tokenizer)
        return DistillationTrainer, {"teacher": teacher.model, "loss": config.loss,
                                     "temperature": config.temperature, "alpha_ce": config.alpha_ce,
                                     "beta": config.beta, "cache": cache, "internals": _internals(lm, teacher, config),
                                     "on_policy": _on_policy(lm, config)}


def distill(teacher: str, student: str, out: str | Path, config: DistillConfig, *,
            progress: TrainProgress | None = None, force: bool = False) -> FinetuneResult:
    """Distill `teacher` into `student` (specs: alias, directory, .gguf or hub id) on `config.data`; `out` is
    written as a fine-tune's is (a plain checkpoint, or a LoRA adapter on the student).

    Example: `slmkit.distill("smollm2-135m-instruct", "out/student", "out/kd", DistillConfig(data="wiki.txt"))`.
    """
    return train_model(student, out, Distillation(config, teacher), progress=progress, force=force)


def _open_teacher(spec: str, task: Task, labels, config: DistillConfig):
    lm = loading.load(spec, kind=task.kind, dtype="float32", device="cpu", allow_pickle=config.allow_pickle,
              trust_remote_code=config.trust_remote_code)
    if lm.tokenizer is None:
        raise SlmError(f"{spec}: the teacher has no tokenizer files; its token ids cannot be checked")
    if labels is not None:
        names = [lm.config.id2label[index] for index in range(lm.config.num_labels)]
        if names != list(labels):
            raise SlmError(f"{spec}: the teacher classifier's labels are {names}; the data's are {list(labels)} "
                           "(distill on data with the teacher's labels)")
    return lm


def _internals(student, teacher, config: DistillConfig) -> Internals | None:
    """The hidden-state / attention settings, checked against both models (None when neither is distilled)."""
    if not config.distills_internals:
        return None
    layers = resolve_layer_map(config.layer_map, student.config, teacher.config)
    if config.attention_loss:
        check_attention(student.config, teacher.config, layers)
        for lm in (student, teacher):
            lm.model.set_attn_implementation("eager")  # fused attention kernels do not return the weights
        without_attention_dropout(student.model)
    return Internals(layers, config.hidden_loss, config.hidden_weight, config.attention_loss, config.attention_weight)


def _check_prompts(config: DistillConfig) -> None:
    task = config.task or infer_task(config.data, training=True)
    if task not in ON_POLICY_TASKS:
        raise SlmError(f"--on-policy-ratio: the student answers the data's prompts, so it needs "
                       f"{' or '.join(ON_POLICY_TASKS)} data; {config.data} is {task} data")


def _on_policy(student, config: DistillConfig) -> OnPolicy | None:
    if config.on_policy_ratio == 0:
        return None
    return OnPolicy(config.on_policy_ratio, config.on_policy_max_new_tokens, config.on_policy_temperature,
                    pad_token_id(student.tokenizer), frozenset(student.stop_tokens()), config.max_length, config.seed)


def _vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else \
        model.config.get_text_config().vocab_size


def _probe_text(path: str) -> str:
    try:
        return load_text(path)[:PROBE_CHARS]
    except SlmError:  # classification rows and other records: the labels' texts are checked by the probes
        return ""
