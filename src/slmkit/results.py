"""The one result every verb returns, from the library (`slmkit.export`, `slmkit.evaluate`, ...), the `slm` commands
and the recipe stages alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """What a verb made: the flat numbers a command prints and a recipe records, and where it wrote them (None: a
    measurement, or a model changed in memory that `slmkit.save` writes). `record`: facts beyond the numbers that a
    caller acts on, e.g. the runtime that ran an evaluated model (`backend`), or a training run's `completed` and
    `step` (False and the checkpoint's step when SIGTERM stopped it).

    Example: `slmkit.evaluate(lm, "wiki.txt").summary["token_perplexity"]`.
    """

    summary: dict
    out: Path | None = None
    record: dict = field(default_factory=dict)
