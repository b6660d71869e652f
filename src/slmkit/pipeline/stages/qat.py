"""The `qat` stage: the newest model trained onto q4_0's grid against its own float distributions (distill.qat),
saved as compressed-tensors that `export` with quant q4_0 writes bit for bit. Its sequences are the run's
--data (or the newest synth stage's answers), else text the model samples itself; QATConfig's count and length
where none are given.

    - stage: qat
      steps: 200
    - stage: export
      quant: q4_0
"""

from __future__ import annotations

from typing import ClassVar, Literal

from slmkit.models.checkpoint import read_manifest
from slmkit.pipeline.registry import StageContext, register_stage, with_settings
from slmkit.pipeline.stages.quantize import QuantizeSettingsStage, run_quantize
from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN
from slmkit.verbs import StageResult
from slmkit.verbs.quantize import GRID, QuantizeSettings

ONE_SHOT_ONLY = {"method", "act_order", "fake_quant"}


# The one grid QAT trains on, so a recipe need not name it (the CLI asks for --target), and QATConfig's sequence
# shape, which the stage has always written into run.json.
OWN_DEFAULTS = {"target": "gguf-q4_0", "calib_samples": QAT_SAMPLES, "calib_seq_len": QAT_SEQ_LEN}


class QATStage(with_settings(QuantizeSettings, QuantizeSettingsStage, exclude=(set(GRID) - {"target"}) | ONE_SHOT_ONLY,
                             written_out=True, own_defaults=OWN_DEFAULTS)):
    """QuantizeSettings' QAT training and calibration settings; one left out takes QATConfig's default."""

    stage: Literal["qat"]
    fixed: ClassVar[dict] = {"method": "qat"}


def run_qat(stage: QATStage, context: StageContext) -> StageResult:
    output = run_quantize(stage, context)
    # run.json keeps the training curve for the report's plot; the command prints only the numbers.
    output.summary["loss_curve"] = read_manifest(context.out)["config"]["loss_curve"]
    return output


register_stage(QATStage, run_qat)
