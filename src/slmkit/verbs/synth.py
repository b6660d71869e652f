"""`synth`: a teacher answers prompts; the good answers become chat training data (`slm finetune` reads it).
SynthSettings (slmkit.synthesis.config) is `slm synth`'s options and the synth recipe stage's fields; the
SynthConfig it nests is what `slmkit.synth` takes."""

from __future__ import annotations

from pathlib import Path

import slmkit
from slmkit.results import StageResult
from slmkit.synthesis import read_prompts
from slmkit.synthesis.config import SynthSettings
from slmkit.synthesis.output import check_output_path
from slmkit.verbs.opening import open_runtime
from slmkit.verbs.registry import ProgressFactory, Verb, register


def run(settings: SynthSettings, model: str, out: Path, *, progress: ProgressFactory, force: bool = False,
        data: str | Path | None = None) -> StageResult:
    """`model` (the teacher) answers `settings.prompts` into the chat JSONL `out`, resuming what an earlier run
    left there; the result is `slmkit.synth`'s. `force`, `data`: unused (a run appends to `out`; the prompts are
    `settings.prompts`)."""
    questions = read_prompts(settings.prompts)  # before the model loads: a bad file fails at once
    check_output_path(out, reads=[settings.prompts])
    lm = open_runtime(model, progress, **settings.runtime_options(), **settings.open_options())
    with progress("answering") as update:
        return slmkit.synth(lm, questions, out, settings.synth_config(), progress=update)


VERB = register(Verb("synth", SynthSettings, run, makes_model=False))
