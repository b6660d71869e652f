"""`eval`: a model's quality on a data file (perplexity, multiple choice, LAMBADA, classification). EvalSettings
(slmkit.evaluation.config) is `slm eval`'s options and the eval recipe stage's fields; its EvalConfig part is what
`slmkit.evaluate` takes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slmkit.evaluation.config import EvalSettings
from slmkit.results import StageResult
from slmkit.verbs.registry import ProgressFactory, Verb, register
from slmkit.verbs.opening import open_runtime


def run(settings: EvalSettings, model: str, out: Path | None = None, *, progress: ProgressFactory,
        force: bool = False, data: str | Path | None = None) -> StageResult:
    """Measure `model` on `settings.data`; the result's summary is `slmkit.evaluate`'s, its record names the
    runtime that ran the model (`backend`). `out`, `force`, `data`: unused (a measurement writes nothing)."""
    import slmkit
    from slmkit import data as data_module

    task = settings.task or data_module.infer_task(settings.data)  # the file is checked before the slow load
    lm = open_runtime(model, progress, **settings.open_options(), **settings.runtime_options(),
                      n_ctx=settings.max_length or 2048, kind="classifier" if task == "classification" else None,
                      logits_all=True)
    with progress(f"{task} on {Path(settings.data).name}") as update:
        measured = slmkit.evaluate(lm, settings.data, dataclasses.replace(settings, task=task), progress=update)
    return StageResult(measured.summary, record={"backend": lm.backend})


VERB = register(Verb("eval", EvalSettings, run, makes_model=False))
