"""`bench`: a model's speed and memory the way llama-bench measures them (prefill, decode, time to first token, peak
RSS). BenchSettings (slmkit.evaluation.config) is `slm bench`'s options and the bench recipe stage's fields; its
BenchConfig part is what `slmkit.bench` takes."""

from __future__ import annotations

from pathlib import Path

import slmkit
from slmkit.evaluation.config import BenchSettings
from slmkit.results import StageResult
from slmkit.verbs.registry import ProgressFactory, Verb, register
from slmkit.verbs.opening import open_runtime


def run(settings: BenchSettings, model: str, out: Path | None = None, *, progress: ProgressFactory,
        force: bool = False, data: str | Path | None = None, fresh_process: bool = False) -> StageResult:
    """Bench `model`; the result's summary is `slmkit.bench`'s. `fresh_process`: in a new process, so the peak
    memory is this model's alone when one process benches several (a recipe); it draws its prompt with the
    default seed and reports no progress. `out`, `force`, `data`: unused (a measurement writes nothing)."""
    options = {**settings.open_options(), **settings.runtime_options(), "compile_decode": settings.compile,
               "n_ctx": settings.n_ctx}
    if fresh_process:
        from slmkit.evaluation.bench import bench_in_fresh_process  # torch: kept out of CLI start-up

        return StageResult(bench_in_fresh_process(model, prompt_tokens=settings.prompt_tokens,
                                                  gen_tokens=settings.gen_tokens, repeats=settings.repeats,
                                                  **options))
    lm = open_runtime(model, progress, **options)
    with progress("bench") as update:
        return slmkit.bench(lm, settings, progress=update)


VERB = register(Verb("bench", BenchSettings, run, makes_model=False))
