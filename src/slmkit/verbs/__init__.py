"""One module per verb that makes a model: its settings (the schema `slm <verb>`, the recipe stage and the
library share, slmkit.schema) and its stage, `check` then `run`. `slm <verb>` parses, runs the stage and prints
its `StageResult`; a recipe stage runs the same stage on the run's newest model.

Only what settings need is imported here (the CLI reads them to build its options without torch); a stage's
`run` imports the library it drives.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

# A progress factory: `with progress(description[, unit]) as update: update(done, total)`; the CLI draws bars
# (with the rate when a unit is named), a recipe run logs.
ProgressFactory = Callable[..., AbstractContextManager]


@dataclass
class StageResult:
    """What a stage made: the flat numbers a command prints and a recipe records, and where it wrote them."""

    summary: dict
    out: Path
