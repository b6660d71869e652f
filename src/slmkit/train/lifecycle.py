"""The life cycle of a training run on a data file (fine-tuning, distillation):

1. check everything that can be checked without a model: the method's own settings, `out` and the files it
   must not replace, the data files, the task (data.tasks), an earlier interrupted run (a resume repeats its
   settings);
2. open the model with the head the task needs, in float32 on the CPU (the Trainer moves it and runs mixed
   precision); a classifier gets a fresh head over the training file's labels;
3. let the method prepare (a teacher, its Trainer class), turn the file into examples (data.training:
   assistant-only labels, packing), holding a seeded slice back for evaluation when there is no eval file;
4. train on SlmTrainer (or the method's subclass) with resumable checkpoints in `<out>.checkpoints/`, through
   train.run's TrainingRun (as every run trains), with the arguments the config declares;
5. evaluate (the task's metric, train.metrics) and write `out` atomically; the checkpoints go once it is whole.

A `TrainingMethod` is what plugs into it: finetune.run's FineTuning adds LoRA, distill.run's Distillation a
teacher, its trainer and its checks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from transformers import set_seed

from slmkit.data.loaders import check_not_empty, infer_task, load_labeled
from slmkit.data.tasks import TASKS, Task, task_names
from slmkit.data.training import collator, label_names, pack, pad_token_id, training_data
from slmkit.errors import SlmError
from slmkit.models.checkpoint import check_destination, checkpoint_dir, save, write_atomic
from slmkit.models.kinds import require_kind
from slmkit.models import loading  # called through the module: tests replace loading.load to see it unused
from slmkit.results import FinetuneResult
from slmkit.train.base import SlmTrainer, TrainProgress
from slmkit.train.metrics import METRICS
from slmkit.train.run import TrainingRun, trainer_arguments

RUN_FILE = "run.json"  # in the checkpoint directory: the settings a --resume must repeat
EVAL_HOLDOUT_MAX = 256  # held-back examples when no --eval-data is given
HELD_BACK_FILE = "heldout.csv"  # a classifier's held-back rows, for evaluating it on data it never saw
FREE_SETTINGS = ("resume", "device", "save_every", "allow_pickle", "trust_remote_code")  # a resume may change


@dataclass(frozen=True)
class Output:
    """Where the trained model goes and what its manifest says."""

    out: Path
    parent: str  # the model it was trained from
    record: dict  # the manifest's config: the settings, the data's digests, the labels, the loss curve
    metrics: dict
    after_write: Callable[[Path], None] | None  # adds files beside the model before the rename
    force: bool
    reads: list  # the paths it must not replace


class TrainingMethod:
    """What a kind of training run plugs into the life cycle. This base trains every weight on SlmTrainer and
    writes a plain checkpoint; a subclass overrides what differs.

    `config` is the run's FinetuneConfig or a subclass of it (finetune/ sits above train/, so it is read here,
    not imported).
    """

    stage: ClassVar[str]  # the manifest's stage
    tasks: ClassVar[tuple[str, ...]] = task_names()  # the tasks it trains

    def __init__(self, config):
        self.config = config

    @property
    def models(self) -> tuple[str, ...]:
        """The other models it reads (a teacher), which `out` must not replace."""
        return ()

    @property
    def settings(self) -> dict:
        """Its settings beyond the config's: a resume must repeat them, the manifest records them."""
        return {}

    def check(self) -> None:
        """Its own refusals, before anything is read."""

    def prepare(self, lm, task: Task, labels: tuple[str, ...] | None) -> tuple[type, dict]:
        """Once the model is open: the Trainer class and the extra keyword arguments it takes."""
        return SlmTrainer, {}

    def trainable(self, model, task: Task):
        """What the Trainer trains: the model, or a wrapper of it."""
        return model

    def write(self, trained, lm, output: Output) -> None:
        """The trained model as a plain checkpoint."""
        if hasattr(trained.config, "use_cache"):
            trained.config.use_cache = True  # the Trainer turns the KV cache off for training; generation wants it
        save(trained, output.out, lm.tokenizer, stage=self.stage, parent=output.parent, config=output.record,
             seed=self.config.seed, metrics=output.metrics, after_write=output.after_write, force=output.force,
             reads=output.reads)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_model(model: str, out: str | Path, method: TrainingMethod, *, progress: TrainProgress | None = None,
                force: bool = False) -> FinetuneResult:
    """Train `model` (a spec) into `out` by `method` (`force` replaces an earlier output): the life cycle
    above."""
    config, out = method.config, Path(out)
    config.check_files()
    task, reads = _checked_task(model, out, method, force)
    checkpoints = checkpoint_dir(out)
    run_settings = {"model": model, "task": task.name, **_resumable_settings(config), **method.settings}
    _check_resume(checkpoints, config.resume, run_settings)

    lm, labels = _open_for(model, task, config)
    trainer_class, extra = method.prepare(lm, task, labels)
    train, held_out, held_back = _examples(task, lm.tokenizer, config, labels)
    trainable = method.trainable(lm.model, task)
    run = TrainingRun(trainer_class, trainable, _arguments(config, task, len(train), checkpoints), train=train,
                      held_out=held_out, collator=collator(task.name, lm.tokenizer, packing=config.packing),
                      tokenizer=lm.tokenizer, progress=progress, **{**extra, **METRICS[task.metric].trainer_options})
    trainer = run.trainer
    if trainer.is_world_process_zero():
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_atomic(checkpoints / RUN_FILE, json.dumps(run_settings, indent=2) + "\n")

    run.train(resume=config.resume)
    curve = run.curve  # before the final evaluation, which is in the metrics
    if trainer.stopped_by_signal:
        return FinetuneResult({}, out, {"heldout": None}, task=task.name, completed=False, curve=curve,
                              checkpoints=checkpoints, step=trainer.state.global_step,
                              main_process=trainer.is_world_process_zero())

    metrics = _final_metrics(trainer, task, held_out, run.seconds)
    keeps_rows = bool(task.classes and held_back)  # a classifier's held-back rows are written beside it
    if trainer.is_world_process_zero():
        record = {**config.record(), "task": task.name, "data_sha256": file_sha256(config.data),
                  "eval_data_sha256": file_sha256(config.eval_data) if config.eval_data else None,
                  "labels": list(labels) if labels else None, "loss_curve": curve, **method.settings}
        after = _held_back_rows(config.data, held_back) if keeps_rows else None
        method.write(trainable, lm, Output(out, model, record, metrics, after, force, reads))
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return FinetuneResult(metrics, out, {"heldout": out / HELD_BACK_FILE if keeps_rows else None}, task=task.name,
                          completed=True, curve=curve, step=trainer.state.global_step,
                          main_process=trainer.is_world_process_zero())


def _checked_task(model: str, out: Path, method: TrainingMethod, force: bool) -> tuple[Task, list]:
    """The run's task, once the method, `out` and the data files are checked; and the paths `out` must not
    replace."""
    config = method.config
    method.check()
    reads = [loading.local_path(spec) for spec in (model, *method.models)] + [config.data, config.eval_data]
    check_destination(out, force, reads)
    for path in (config.data, config.eval_data):
        if path is not None:
            check_not_empty(path)  # else the tokenizer fails on no text, after the model is loaded
    task = TASKS[config.task or infer_task(config.data, training=True)]
    if task.name not in method.tasks:
        raise SlmError(f"{config.data}: {task.name} data; {method.stage} takes {', '.join(method.tasks)}")
    return task, reads


def _resumable_settings(config) -> dict:
    """The settings that shape the run's steps; a resumed run must repeat them (device may change)."""
    settings = config.record()
    for free in FREE_SETTINGS:
        settings.pop(free)
    settings["data_sha256"] = file_sha256(config.data)
    return settings


def _check_resume(checkpoints: Path, resume: bool, settings: dict) -> None:
    saved = sorted(checkpoints.glob("checkpoint-*")) if checkpoints.is_dir() else []
    if not resume:
        if saved:
            raise SlmError(f"{checkpoints} holds an interrupted run; pass --resume to continue it, or remove "
                           "that directory to start again")
        return
    if not saved:
        raise SlmError(f"--resume: no checkpoint in {checkpoints} to continue from")
    previous = json.loads((checkpoints / RUN_FILE).read_text()) if (checkpoints / RUN_FILE).is_file() else {}
    changed = [key for key in settings if key in previous and previous[key] != settings[key]]
    if changed:
        key = changed[0]
        raise SlmError(f"--resume: {key} was {previous[key]!r} in the interrupted run and is {settings[key]!r} "
                       "now; resume with the same settings")


def _open_for(model: str, task: Task, config):
    """The model with the head `task` trains; a classifier's head over the training file's labels."""
    found = loading.peek_kind(model)  # first: a chat fine-tune of an encoder would load a half-random LM head
    if found is not None and found[0] not in task.accepts:
        require_kind(model, task.kind, *found, f"{task.name} fine-tuning")
    labels = label_names(config.data) if task.classes else None
    set_seed(config.seed)  # a new head and LoRA's matrices start from the run's seed
    lm = loading.load(model, kind=task.kind, labels=labels, dtype="float32", device="cpu",
              allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    if lm.tokenizer is None:
        raise SlmError(f"{model}: has no tokenizer files; fine-tuning needs one")
    if labels is not None and lm.config.pad_token_id is None:
        # A decoder's classifier reads the last non-pad token, so it must know which id pads the batch.
        lm.config.pad_token_id = pad_token_id(lm.tokenizer)
    return lm, labels


def _examples(task: Task, tokenizer, config, labels):
    """Training and evaluation examples: --eval-data, or a seeded slice of the training file held back (the
    indices of the held-back examples come third, None with --eval-data)."""

    def examples(path: str) -> list[dict]:
        return training_data(task.name, path, tokenizer, max_length=config.max_length, label_names=labels).examples

    train, held_back = examples(config.data), None
    if config.eval_data:
        held_out = examples(config.eval_data)
    else:
        if len(train) < 2:
            raise SlmError(f"{config.data}: one example is too few to hold some back for evaluation; "
                           "add examples or pass --eval-data")
        order = list(range(len(train)))
        random.Random(config.seed).shuffle(order)
        count = min(EVAL_HOLDOUT_MAX, max(1, round(len(train) * config.eval_fraction)))
        held_back = sorted(order[:count])
        held_out = [train[i] for i in held_back]
        train = [train[i] for i in sorted(order[count:])]
    if config.packing:
        if not task.packable:
            raise SlmError(f"--packing packs language-model examples; {task.name} examples are not packed")
        train, held_out = pack(train, config.max_length), pack(held_out, config.max_length)
    return train, held_out, held_back


def _arguments(config, task: Task, examples: int, checkpoints: Path):
    """The Trainer's arguments: those the config's fields declare (schema.setting(trainer=...)), and these,
    derived from several settings or fixed (train.base adds what every slmkit trainer sets)."""
    steps_per_epoch = math.ceil(examples / (config.batch_size * config.grad_accum))
    total = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    return trainer_arguments(
        checkpoints, config, device=config.device, dtype=config.dtype,
        learning_rate=config.learning_rate,  # --lr, or without it LoRA's default or a full fine-tune's
        max_steps=config.max_steps or -1,  # None: --epochs decides
        logging_steps=max(1, total // 100),  # about a hundred points on the loss curve
        eval_strategy="steps" if config.eval_every else "no",  # 0: evaluated once, at the end
        eval_steps=config.eval_every or None,
        save_strategy="steps" if config.save_every else "no",  # 0: saved only on SIGTERM
        save_steps=config.save_every or None,
        save_total_limit=1,  # each checkpoint is complete before the older one goes (SlmTrainer)
        prediction_loss_only=METRICS[task.metric].loss_only,  # the task's metric reads the predictions or not
    )


def _final_metrics(trainer: SlmTrainer, task: Task, held_out, seconds: float) -> dict:
    evaluation = trainer.evaluate()
    state = trainer.state
    train_losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    metrics = {
        "steps": state.global_step,
        "train_loss": train_losses[-1] if train_losses else None,
        "eval_loss": evaluation.get("eval_loss"),
        "eval_examples": len(held_out),
        "tokens": state.num_input_tokens_seen,
        "tokens_per_s": state.num_input_tokens_seen / seconds if seconds > 0 else None,
        "seconds": seconds,
    }
    return {**metrics, **METRICS[task.metric].report(evaluation)}


def _held_back_rows(path: str, indices: list[int]) -> Callable[[Path], None]:
    """Writes the held-back rows (a classification file has one example per row) as `text,label` CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    rows = load_labeled(path)
    writer.writerows(rows[i] for i in indices)
    return lambda directory: (directory / HELD_BACK_FILE).write_text(buffer.getvalue())
