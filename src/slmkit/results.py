"""The one result every verb returns, from the library (`slmkit.export`, `slmkit.evaluate`, ...), the `slm` commands
and the recipe stages alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """What a verb made: the flat numbers a command prints and a recipe records, and where it wrote them (None: a
    measurement, or a model changed in memory that `slmkit.save` writes). `record`: facts beyond the numbers that a
    caller acts on, e.g. the runtime that ran an evaluated model (`backend`), or a trained classifier's held-back
    rows (`heldout`).

    Example: `slmkit.evaluate(lm, "wiki.txt").summary["token_perplexity"]`.
    """

    summary: dict
    out: Path | None = None
    record: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class FinetuneResult(StageResult):
    """A training run's (`slmkit.finetune`, `slmkit.distill`): the final evaluation's metrics in `summary`, the
    model's directory in `out`, and in `record` `heldout`: the held-back rows a classifier never trained on
    (heldout.csv in `out`), or None.

    Example: `slmkit.finetune("minilm-l6", "out/clf", FinetuneConfig(data="train.tsv")).summary["eval_accuracy"]`.
    """

    task: str
    completed: bool  # False: SIGTERM stopped it, at a checkpoint it resumes from (summary is empty)
    curve: dict = field(default_factory=dict)  # the loss curve: train and eval points, a distillation's parts
    checkpoints: Path | None = None  # where a stopped run's checkpoint is
    step: int = 0
    main_process: bool = True  # under torchrun/accelerate: whether this process is the one that reports
