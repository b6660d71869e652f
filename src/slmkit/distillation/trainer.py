"""`DistillationTrainer`: the fine-tuning trainer with the teacher's distributions in the loss.

Per batch the teacher (frozen, in eval mode) reads the same inputs as the student, packed rows' position ids
included. A language model is compared at the positions with a label: the next-token distributions before
each label that is not -100 (so a chat distils on the assistant's tokens only, as it fine-tunes); a
classifier at every row. The loss is alpha_ce x the student's own cross-entropy + (1 - alpha_ce) x the
divergence (distill.losses), logged apart as `kd_loss` and `ce_loss`.

With a teacher cache (distill.cache) the teacher's top-k comes from the cache, built before the first step
over the training and evaluation rows (by the main process; the others wait), and the teacher is not run
during training at all. With a teacher memory (`teacher_memory_bytes`, distill.cache.TeacherMemory) its full
distributions are computed once over the same rows and kept in memory, when they fit: what a run that reads
few rows many times (QAT) asks for, the objective unchanged.

`autocast`: the student's training forward pass (so its backward) runs under autocast to that dtype (bfloat16
where the hardware computes it natively); the weights, their gradients, the optimizer, the loss and evaluation
stay float32.

Hidden-state and attention losses (distill.intermediate) are added to that, each with its weight, and logged
as `hidden_loss` and `attention_loss`. With on-policy batches (distill.on_policy, GKD) a drawn share of the
batches carry the student's own sampled answers in place of the data's, before the step computes its loss;
the share drawn is logged as `on_policy_share`. Projections from the student's width to the teacher's, when the widths
differ, train in the same optimizer (their own parameter group), are clipped with the model, and are kept in
each checkpoint beside the optimizer state, so a resumed run goes on with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from slmkit.distillation.cache import ROW_KEY, TeacherCache, TeacherMemory, WithRowIndex, cache_key
from slmkit.distillation.intermediate import LayerPairs, attention_loss, hidden_loss, projections
from slmkit.distillation.losses import compared, distillation_loss
from slmkit.distillation.on_policy import answer_seeds, draws_on_policy, on_policy_batch
from slmkit.errors import SlmError
from slmkit.runtime.batched import answer_ids
from slmkit.runtime.sampling import SamplingConfig
from slmkit.runtime.torch_backend import TorchModel
from slmkit.train.base import SlmTrainer

LOSS_PARTS = ("kd_loss", "ce_loss", "hidden_loss", "attention_loss")  # what the loss is made of, each logged


@dataclass(frozen=True)
class CacheSettings:
    root: str
    top_k: int
    teacher_spec: str
    teacher_path: Path | None
    tokenizer: object


@dataclass(frozen=True)
class Internals:
    """What of the teacher's inside is distilled: hidden states (`hidden_loss` mse|cosine, None: not) and
    attention distributions, at `layers`' pairs, each loss times its weight."""

    layers: LayerPairs
    hidden_loss: str | None
    hidden_weight: float
    attention: bool
    attention_weight: float


@dataclass(frozen=True)
class OnPolicy:
    """GKD's on-policy batches (distill.on_policy): their share, how the student samples, how rows end."""

    ratio: float
    max_new_tokens: int
    temperature: float
    pad_id: int
    end_ids: frozenset[int]
    max_length: int
    seed: int


PROJECTIONS_FILE = "distill_projections.safetensors"  # in each checkpoint, beside the optimizer state


class ClearProjectionGradients(TrainerCallback):
    """The Trainer clears the model's gradients after each optimizer step; the projections live outside it."""

    def __init__(self, modules: torch.nn.Module):
        self.modules = modules

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.modules.zero_grad(set_to_none=True)


class DistillationTrainer(SlmTrainer):
    logged_parts = (*LOSS_PARTS, "on_policy_share")

    def __init__(self, *args, teacher, loss: str, temperature: float, alpha_ce: float, beta: float,
                 cache: CacheSettings | None = None, internals: Internals | None = None,
                 on_policy: OnPolicy | None = None, teacher_memory_bytes: int = 0,
                 autocast: torch.dtype | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.kd = {"loss": loss, "temperature": temperature, "beta": beta}
        self.alpha_ce = alpha_ce
        # The loss below is a mean over this batch's positions: the Trainer divides it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._parts: dict[str, list[float]] = {name: [] for name in LOSS_PARTS}  # training batches since the last log
        self._eval_parts: dict[str, list[float]] = {name: [] for name in LOSS_PARTS}  # this evaluation's batches
        if teacher_memory_bytes and (cache is not None or internals is not None or on_policy is not None):
            raise SlmError("the teacher memory holds the teacher's output distributions over the data: a teacher "
                           "cache, hidden-state and attention losses and on-policy batches each need it otherwise")
        if autocast is not None and internals is not None:
            raise SlmError("hidden-state and attention losses compare float32 states: train them without autocast")
        self.cache = self._open_cache(cache, temperature) if cache is not None else None
        self.memory = self._remember_teacher(teacher_memory_bytes) if teacher_memory_bytes else None
        self.autocast = autocast
        self.internals = internals
        self.on_policy = on_policy
        self._micro_batch = (-1, 0)  # (step, micro-batches drawn in it): what on-policy draws are seeded by
        self._on_policy_draws: list[float] = []
        self._batch_on_policy = False
        if (on_policy is not None or internals is not None) and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise SlmError("--hidden-loss, --attention-loss and --on-policy-ratio run under DDP, not FSDP or "
                           "DeepSpeed (their projections and sampling are outside the sharded model)")
        self.projections = None
        if internals is not None and internals.hidden_loss is not None:
            self.projections = projections(internals.layers)
            if self.projections is not None:
                self.projections.to(self.args.device)
                self.add_callback(ClearProjectionGradients(self.projections))

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
        self._index_rows(train, held_out)
        return cache

    def _remember_teacher(self, max_bytes: int) -> TeacherMemory | None:
        train, held_out = list(self.train_dataset), list(self.eval_dataset or [])
        self.teacher.to(self.args.device)
        memory = TeacherMemory.build(self.teacher, train + held_out, self.data_collator, self.args.device, max_bytes,
                                     self.args.per_device_eval_batch_size)
        if memory is not None:
            self.teacher.to("cpu")  # not run again: the memory answers for it
            self._index_rows(train, held_out)
        return memory

    def _index_rows(self, train: list[dict], held_out: list[dict]) -> None:
        """Each row carries its index in train + held_out to the batch (ROW_KEY), where the cache is read."""
        self.train_dataset = [{**row, ROW_KEY: index} for index, row in enumerate(train)]
        self.eval_dataset = [{**row, ROW_KEY: len(train) + index} for index, row in enumerate(held_out)]
        self.data_collator = WithRowIndex(self.data_collator)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cached_rows = inputs.pop(ROW_KEY, None)
        wanted = self._wanted_outputs()
        with torch.autocast(self.args.device.type, self.autocast, enabled=model.training and bool(self.autocast)):
            outputs = model(**inputs, **wanted)
        student_rows = compared(outputs.logits, inputs.get("labels"))
        teacher = None
        if self.cache is not None:
            teacher_rows = self.cache.lookup(cached_rows.tolist(), outputs.logits.device)
            if len(teacher_rows.ids) != len(student_rows):
                raise SlmError(f"the teacher cache {self.cache.directory} holds {len(teacher_rows.ids)} positions "
                               f"for this batch and it has {len(student_rows)}; remove that directory to rebuild it")
        elif self.memory is not None:
            teacher_rows = self.memory.lookup(cached_rows.tolist(), outputs.logits.device)
        else:
            teacher = self._teacher_outputs(inputs, outputs.logits.device, wanted)
            teacher_rows = compared(teacher.logits, inputs.get("labels"))
        kd = distillation_loss(student_rows, teacher_rows, **self.kd)
        # The labels of an on-policy batch are the student's own samples: only the teacher's view of them teaches.
        on_policy = model.training and self._batch_on_policy
        alpha_ce = 0 if on_policy else self.alpha_ce
        loss = kd if alpha_ce == 0 else alpha_ce * outputs.loss + (1 - alpha_ce) * kd
        parts = {"kd_loss": kd, "ce_loss": None if on_policy else outputs.loss}
        if self.internals is not None:
            inside = self.internals
            mask = inputs.get("attention_mask")
            if inside.hidden_loss is not None:
                parts["hidden_loss"] = hidden_loss(inside.hidden_loss, outputs.hidden_states, teacher.hidden_states,
                                                   inside.layers, self.projections, mask)
                loss = loss + inside.hidden_weight * parts["hidden_loss"]
            if inside.attention:
                parts["attention_loss"] = attention_loss(outputs.attentions, teacher.attentions, inside.layers, mask)
                loss = loss + inside.attention_weight * parts["attention_loss"]
        kept = self._parts if model.training else self._eval_parts
        for name, value in parts.items():
            if value is not None:
                kept[name].append(float(value.detach()))
        if return_outputs and self.internals is not None:
            # Evaluation reads every output but the loss as the predictions: the logits alone, as without these.
            outputs = type(outputs)(**{k: v for k, v in outputs.items() if k not in ("hidden_states", "attentions")})
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._batch_on_policy = False
        if self.on_policy is not None:
            step, drawn = self._micro_batch
            drawn = drawn if step == self.state.global_step else 0
            self._micro_batch = (self.state.global_step, drawn + 1)
            self._batch_on_policy = draws_on_policy(self.on_policy.ratio, self.on_policy.seed, self.state.global_step,
                                                    drawn)
            if self._batch_on_policy:
                inputs = on_policy_batch(inputs, lambda prompts, budget: self._sample(model, prompts, budget, drawn),
                                         pad_id=self.on_policy.pad_id, end_ids=self.on_policy.end_ids,
                                         max_length=self.on_policy.max_length,
                                         max_new_tokens=self.on_policy.max_new_tokens)
            self._on_policy_draws.append(1.0 if self._batch_on_policy else 0.0)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.projections is not None and self.accelerator.sync_gradients and self.accelerator.num_processes > 1:
            # Outside the DDP-wrapped model, the projections' gradients are averaged here, before clipping.
            for parameter in self.projections.parameters():
                if parameter.grad is not None:  # gloo has no AVG
                    torch.distributed.all_reduce(parameter.grad)
                    parameter.grad /= torch.distributed.get_world_size()
        return loss

    def _clip_grad_norm(self, model):
        if self.projections is None:
            return super()._clip_grad_norm(model)
        both = [*model.parameters(), *self.projections.parameters()]  # clipped as one, as the Trainer clips the model
        return self.accelerator.clip_grad_norm_(both, self.args.max_grad_norm)

    def _sample(self, model, prompts: list[list[int]], max_new_tokens: int, micro_batch: int) -> list[list[int]]:
        """The student's answers to `prompts`, sampled from its own distribution at the on-policy temperature and
        nothing else (the runtime's batched rows, each row from its own seed): in eval mode (no dropout)."""
        seeds = answer_seeds(len(prompts), self.on_policy.seed, self.state.global_step, micro_batch,
                             self.args.process_index)
        student = self.accelerator.unwrap_model(model)
        model_itself = student.get_base_model() if hasattr(student, "get_base_model") else student  # under LoRA
        rows = TorchModel(model=model_itself, tokenizer=None, spec="the student", kind="causal-lm", path=None)
        samplings = [SamplingConfig(temperature=self.on_policy.temperature, top_p=1.0, top_k=0,
                                    max_new_tokens=max_new_tokens, seed=seed) for seed in seeds]
        was_training = student.training
        student.eval()
        try:
            return answer_ids(rows, prompts, samplings, stops=self.on_policy.end_ids)
        finally:
            student.train(was_training)

    def _wanted_outputs(self) -> dict:
        if self.internals is None:
            return {}
        return {"output_hidden_states": self.internals.hidden_loss is not None,
                "output_attentions": self.internals.attention}

    def _teacher_outputs(self, inputs: dict, device, wanted: dict):
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            return self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}, **wanted)

    def create_optimizer(self, model=None):
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if created and self.projections is not None:
            optimizer.add_param_group({"params": list(self.projections.parameters()), "weight_decay": 0.0})
        return optimizer

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.projections is not None and self.args.should_save:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.projections.state_dict().items()},
                      os.path.join(output_dir, PROJECTIONS_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None and self.projections is not None:
            from safetensors.torch import load_file

            saved = Path(checkpoint) / PROJECTIONS_FILE
            if not saved.is_file():
                raise SlmError(f"{checkpoint}: has no {PROJECTIONS_FILE} for the hidden-state projections; "
                               "resume with the settings of the interrupted run")
            self.projections.load_state_dict(load_file(saved, device=str(self.args.device)))
        super()._load_optimizer_and_scheduler(checkpoint)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: the mean of each part since the last one
            _add_means(logs, {**self._parts, "on_policy_share": self._on_policy_draws})
        if "eval_loss" in logs:  # an evaluation's: eval_ce_loss is what the student's perplexity comes from
            _add_means(logs, self._eval_parts, prefix="eval_")
        super().log(logs, *args, **kwargs)


def _add_means(logs: dict, collected: dict[str, list[float]], prefix: str = "") -> None:
    """Each collected value list's mean into `logs` (under `prefix`), emptied for the next log."""
    for name, values in collected.items():
        if values:
            logs[prefix + name] = sum(values) / len(values)
            values.clear()
