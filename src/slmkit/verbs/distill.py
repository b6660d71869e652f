"""`distill`: a student learns a teacher's next-token distributions (and, asked, its hidden states and attention).
DistillConfig (slmkit.distillation.config) is `slm distill`'s options, the distill recipe stage's fields and what
`slmkit.distill` takes; the run is a fine-tune's (slmkit.verbs.finetune, train.lifecycle)."""

from __future__ import annotations

from pathlib import Path

import slmkit
from slmkit.distillation.config import DistillConfig
from slmkit.results import FinetuneResult
from slmkit.verbs.registry import ProgressFactory, Verb, register
from slmkit.verbs.finetune import trained


def run(settings: DistillConfig, model: str, out: Path, *, progress: ProgressFactory, force: bool = False,
        data: str | Path | None = None, teacher: str) -> FinetuneResult:
    """Train the student `model` on `settings.data` with `teacher`'s distributions into `out`, as a fine-tune
    runs (slmkit.verbs.finetune.trained). `data`: unused (the training file is `settings.data`)."""
    return trained(lambda update: slmkit.distill(teacher, model, out, settings, progress=update, force=force),
                   "distill", progress)


VERB = register(Verb("distill", DistillConfig, run))
