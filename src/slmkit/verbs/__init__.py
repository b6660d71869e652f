"""One module per verb (prune, quantize, student, finetune, distill, synth, export, eval, bench): its settings (the
schema `slm <verb>`, the recipe stage and the library share, slmkit.schema) and its stage, whose `run` checks what
can fail before the slow load, then does the work. `slm <verb>` parses, runs the stage and prints its
`StageResult`; a recipe stage runs the same stage on the run's newest model (a measuring one on each model).

Only what settings need is imported here (the CLI reads them to build its options without torch); a stage's
`run` imports the library it drives.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

# A progress factory: `with progress(description[, unit]) as update: update(done, total)`; the CLI draws bars
# (with the rate when a unit is named), a recipe run logs.
ProgressFactory = Callable[..., AbstractContextManager]


@dataclass
class StageResult:
    """What a stage made: the flat numbers a command prints and a recipe records, and where it wrote them (None: a
    measurement that writes nothing). `record`: facts beyond the numbers that a caller acts on, e.g. a training
    run's `completed` and `step` (False and the checkpoint's step when SIGTERM stopped it)."""

    summary: dict
    out: Path | None
    record: dict = field(default_factory=dict)
