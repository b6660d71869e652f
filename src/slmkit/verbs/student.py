"""`student`: the smaller model a teacher is distilled into, made from the teacher's blocks, from a fresh
config.json, or by structured pruning (slmkit.distillation.student). One settings class for `slm student` and the
StudentConfig `slmkit.student` takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slmkit
from slmkit.distillation.student import StudentConfig, parse_layers
from slmkit.models.checkpoint import check_destination
from slmkit.models.loading import local_path
from slmkit.results import StageResult
from slmkit.schema import setting
from slmkit.settings import CalibrationSettings, OpenSettings
from slmkit.verbs.opening import open_float32
from slmkit.verbs.prune import parse_count, parse_width
from slmkit.verbs.registry import ProgressFactory, Verb, register


# No --device: slmkit.student takes none; a structured student is scored on the CPU, where the model is.
@dataclass(kw_only=True)
class StudentSettings(CalibrationSettings, OpenSettings):
    """How to make a student: exactly one of layers, depth, config, width or target_params (the last two
    score blocks on calibration text; `seed` also seeds a fresh student's weights)."""

    layers: str | None = setting("Keep these blocks, with their weights: 0,2,4.", None)
    depth: int | None = setting("Keep this many blocks, evenly spaced from the first.", None)
    config: Path | None = setting("A config.json of the student: fresh weights, the teacher's tokenizer and "
                                  "vocabulary.", None)
    width: str | None = setting("Structured: what each block keeps, e.g. ffn=1024,heads=6.", None)
    target_params: str | None = setting("Structured: the student's size, e.g. 90M.", None)

    def __post_init__(self) -> None:
        self.method_config()  # the library's one-line refusals, before anything is opened
        super().__post_init__()

    def method_config(self):
        """The StudentConfig `slmkit.student` takes, checked."""
        return StudentConfig(layers=parse_layers(self.layers) if self.layers is not None else None,
                             depth=self.depth, config=str(self.config) if self.config else None,
                             width=parse_width(self.width) or None, target_params=parse_count(self.target_params),
                             seed=self.seed)


def run(settings: StudentSettings, model: str, out: Path, *, progress: ProgressFactory, force: bool = False,
        data: str | Path | None = None) -> StageResult:
    """Make a student of the teacher `model` and save it in `out` (stage "student", the teacher as parent).
    `data`: the calibration text of a structured student when `settings.calib` is unset."""
    from slmkit.compress.calibration import Calibration  # torch: kept out of CLI start-up
    from slmkit.verbs.compress import calibrate

    config = settings.method_config()
    structured = config.structured()
    calibration = Calibration.from_settings(settings, data)
    check_destination(out, force, reads=[local_path(model), settings.config, settings.calib])
    lm = open_float32(settings, model, progress)
    if structured is None:  # blocks kept or a fresh config: nothing to score, seconds
        result = slmkit.student(lm, config)
    else:
        calibrate(lm, calibration, progress)
        with progress("scoring blocks, channels and heads") as update:
            result = slmkit.student(lm, config, calibration, progress=update)
    slmkit.save(lm, out, result=result, parent=model, force=force)
    return StageResult(result.summary, Path(out))


# No recipe stage: a recipe makes a smaller model with its structured stage (what --width and --target-params run).
VERB = register(Verb("student", StudentSettings, run, recipe=False))
