"""The training base every slmkit trainer stands on: transformers' `Trainer` plus what a long run on a
laptop (or a node that may be pre-empted) needs.

- checkpoints are written atomically: each `checkpoint-N` is assembled in a staging directory and renamed
  into place, so a `kill -9` mid-save leaves the previous checkpoint whole and `--resume` finds only
  complete ones (the Trainer itself writes straight into `checkpoint-N`);
- a NaN or infinite loss stops the run before the optimizer applies it, so the last checkpoint stays good;
- SIGTERM (a scheduler's pre-emption, `kill`) finishes the current step, saves a checkpoint and stops;
- Ctrl-C (SIGINT) raises KeyboardInterrupt at once, as Python does, and again at the end of the step if the
  first one was lost;
- progress (step, loss, tokens/s) goes to a callback instead of tqdm, so the CLI draws it.

Resume, mixed precision, gradient accumulation and distributed training (DDP/FSDP under `torchrun` or
`accelerate launch`) are the Trainer's own. Subclasses (fine-tuning, distillation) override only what they
must, as TRL's trainers do.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from slmkit.errors import SlmError

STAGING_DIR = ".staging"  # inside the checkpoint directory; never matches `checkpoint-N`, so resume skips it

# progress(step, total_steps, {"loss": ..., "tokens_per_s": ..., ...})
TrainProgress = Callable[[int, int, dict], None]


class TrainingError(SlmError):
    """Training cannot go on (a non-finite loss)."""


class StopOnSignal(TrainerCallback):
    """SIGTERM asks the run to save a checkpoint and stop at the end of the current step; a Ctrl-C that Python
    lost stops it there too.

    Under DDP every rank gets the signal but not necessarily in the same step; the flag is reduced across
    ranks so they all save and stop at the same step (a rank that stopped alone would hang the others).

    Ctrl-C raises KeyboardInterrupt wherever the main thread is, and Python swallows it when that is a finalizer
    run by the garbage collector (exceptions in `__del__` and weakref callbacks are only printed); the Trainer
    collects garbage at the start of training, which under load takes seconds. So SIGINT is also remembered and
    raised again at the next step's (or evaluation batch's) end. `SlmTrainer.train` installs the handlers for
    the whole run and restores the caller's afterwards, however the run ends.
    """

    def __init__(self):
        self.requested = False
        self.stopped = False
        self.interrupted = False
        self._previous_term = None
        self._previous_int = None

    def _request(self, signum, frame) -> None:
        self.requested = True

    def _interrupt(self, signum, frame) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def install_handlers(self) -> None:
        self.interrupted = False
        self._previous_term = signal.signal(signal.SIGTERM, self._request)
        # Only where Ctrl-C raises KeyboardInterrupt (the main thread, not ignored or handled by the caller).
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous_int = signal.signal(signal.SIGINT, self._interrupt)

    def on_step_end(self, args, state, control, **kwargs):
        self._raise_lost_interrupt()
        if self._agreed():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True

    def on_prediction_step(self, args, state, control, **kwargs):
        self._raise_lost_interrupt()

    def restore_handlers(self) -> None:
        for signum, previous in ((signal.SIGTERM, self._previous_term), (signal.SIGINT, self._previous_int)):
            if previous is not None:
                signal.signal(signum, previous)
        self._previous_term = self._previous_int = None

    def _raise_lost_interrupt(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def _agreed(self) -> bool:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.requested
        flag = torch.tensor([1 if self.requested else 0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


class ReportProgress(TrainerCallback):
    """Calls `progress(step, total, facts)` after every step: the latest logged loss and tokens/s."""

    def __init__(self, progress: TrainProgress):
        self.progress = progress
        self.facts: dict = {}
        self._started = 0.0
        self._tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        self._tokens_at_start = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss", "eval_accuracy", "eval_perplexity"):
            if logs and key in logs:
                self.facts[key] = logs[key]

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self._started
        tokens = state.num_input_tokens_seen - self._tokens_at_start
        if elapsed > 0:
            self.facts["tokens_per_s"] = tokens / elapsed
        if state.is_world_process_zero:
            self.progress(state.global_step, state.max_steps, dict(self.facts))


class SlmTrainer(Trainer):
    """`transformers.Trainer` with atomic checkpoints, a non-finite-loss guard and SIGTERM handling.

    Example: `SlmTrainer(model=model, args=TrainingArguments(...), train_dataset=data, progress=print).train()`;
    `trainer.stopped_by_signal` then says whether SIGTERM cut the run short (a checkpoint was saved).
    """

    logged_parts: tuple[str, ...] = ()  # values a subclass logs beside the loss, kept in the loss curve

    def __init__(self, *args, progress: TrainProgress | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # it prints every log dict to stdout; progress() reports instead
        self._signal = StopOnSignal()
        self.add_callback(self._signal)
        if progress is not None:
            self.add_callback(ReportProgress(progress))
        self._staging = False

    @property
    def stopped_by_signal(self) -> bool:
        return self._signal.stopped

    def train(self, *args, **kwargs):
        self._signal.install_handlers()  # before the Trainer's first garbage collection
        try:
            return super().train(*args, **kwargs)
        finally:
            self._signal.restore_handlers()

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Checked before the optimizer step that would write the NaN into the weights.
        if not torch.isfinite(loss).all():
            where = Path(self.args.output_dir)
            kept = (f"the last good checkpoint is in {where}" if any(where.glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
                    else "no checkpoint had been saved yet")
            raise TrainingError(f"the loss became {float(loss):g} at step {self.state.global_step + 1}; stopped "
                                f"({kept}); try a lower --lr")
        return loss

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = run_dir / STAGING_DIR / name
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)  # what a killed save left behind
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # every rank writes its part (RNG state) into `staged`
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            _replace_directory(staged, run_dir / name)
            staged.parent.rmdir()
            _keep_newest(run_dir, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()


def _replace_directory(source: Path, target: Path) -> None:
    """Move `source` to `target` in one rename; an older `target` (the same step saved twice) goes after."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def _keep_newest(run_dir: Path, limit: int | None) -> None:
    if not limit:
        return
    checkpoints = sorted(run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for old in checkpoints[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


def training_arguments(output_dir: str, **settings):
    """transformers' TrainingArguments with what every slmkit trainer sets alike: a linear schedule after a 3%
    warm-up, no reporting or progress bars (progress() reports), the rows' own columns kept (packed rows carry
    `seq_lengths` for the collator), the non-padding tokens counted, data loaded in the main process."""
    from transformers import TrainingArguments

    house = dict(lr_scheduler_type="linear", warmup_steps=0.03, report_to="none", disable_tqdm=True,
                 remove_unused_columns=False, include_num_input_tokens_seen="non_padding",
                 dataloader_num_workers=0)
    return TrainingArguments(output_dir=output_dir, **{**house, **settings})


def loss_curve(log_history: list[dict], parts: tuple[str, ...] = ()) -> dict:
    """The logged losses as [step, value] pairs: training loss, and eval loss (with the task metric); under
    `parts`, the other logged values a trainer names (SlmTrainer.logged_parts: distillation's loss parts), when
    there are any."""
    train = [[entry["step"], entry["loss"]] for entry in log_history if "loss" in entry]
    evals = [[entry["step"], entry["eval_loss"]] + ([entry["eval_accuracy"]] if "eval_accuracy" in entry else [])
             for entry in log_history if "eval_loss" in entry]
    curve: dict = {"train": train, "eval": evals}
    logged = {name: [[entry["step"], entry[name]] for entry in log_history if name in entry] for name in parts}
    if any(logged.values()):
        curve["parts"] = {name: points for name, points in logged.items() if points}
    return curve


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else math.inf
