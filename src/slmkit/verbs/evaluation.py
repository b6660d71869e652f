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
    """Measure `model` on `settings.data` (with `settings.reference`, also its divergence from that model, each on
    its own runtime); the result's summary is `slmkit.evaluate`'s, its record names the runtime that ran the model
    (`backend`). `out`, `force`, `data`: unused (a measurement writes nothing)."""
    import slmkit
    from slmkit import data as data_module

    # The file and the task are checked before the slow load.
    settings = dataclasses.replace(settings, task=settings.task or data_module.infer_task(settings.data))
    task = settings.task
    lm = open_runtime(model, progress, **settings.open_options(), **settings.runtime_options(),
                      n_ctx=settings.max_length or 2048, kind="classifier" if task == "classification" else None,
                      logits_all=True)
    reference = None
    if settings.reference is not None:  # on the runtime its file calls for: the original is often a torch model
        reference = open_runtime(settings.reference, progress, **settings.open_options(), backend="auto",
                                 device=settings.device, dtype=settings.dtype, n_ctx=settings.max_length or 2048,
                                 logits_all=True)
    with progress(f"{task} on {Path(settings.data).name}") as update:
        measured = slmkit.evaluate(lm, settings.data, settings, reference=reference, progress=update)
    return StageResult(measured.summary, record={"backend": lm.backend})


VERB = register(Verb("eval", EvalSettings, run, makes_model=False))
