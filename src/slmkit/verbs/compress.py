"""What the stages that rewrite a model's weights share (prune, quantize, student): check everything that can
fail before the slow load, open the model in float32 on the CPU, read or sample the calibration text, run the
method a block at a time on the device, save."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import slmkit
from slmkit.compress import needs_calibration
from slmkit.compress.calibration import Calibration
from slmkit.models.checkpoint import check_destination
from slmkit.models.devices import resolve_device
from slmkit.models.loading import local_path
from slmkit.results import StageResult
from slmkit.verbs.registry import ProgressFactory
from slmkit.verbs.opening import open_float32


def compress(settings, model: str, out: Path, config, *, method: Callable, description: str,
             progress: ProgressFactory, force: bool, data: str | Path | None) -> StageResult:
    """`method(lm, calibration, device, update) -> CompressResult` on `model`, saved in `out`; `settings`: a
    stage's settings, which take the calibration, compute and open groups of slmkit.settings."""
    calibration = Calibration.from_settings(settings, data).for_method(config)
    device = resolve_device(settings.device)  # a device that is not there: before the slow load
    check_destination(out, force, reads=[local_path(model), settings.calib])
    lm = open_float32(settings, model, progress)
    if needs_calibration(config):
        calibrate(lm, calibration, progress)
    with progress(description) as update:
        result = method(lm, calibration, device, update)
    slmkit.save(lm, out, result=result, parent=model, force=force)
    return StageResult(result.summary, Path(out))


def calibrate(lm, calibration, progress: ProgressFactory) -> None:
    """Make `calibration`'s token ids for `lm` under a progress line (with tokens/s while the model samples)."""
    sampled = not calibration.data
    what = "sampling calibration text from the model" if sampled else "preparing calibration data"
    with progress(what, unit="tokens" if sampled else None) as update:
        calibration.ids(lm, progress=update)
