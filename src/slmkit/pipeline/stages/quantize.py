"""The `quantize` and `qat` stages: QuantizeSettings (slmkit.verbs.quantize) run on the newest model, calibrated
on the run's --data, else the newest synth stage's answers, else text the model samples itself.

The quantize stage takes them bar QAT's: RTN, GPTQ or AWQ, saved as compressed-tensors (or float values on the
grid). The qat stage is the verb with method qat: the newest model trained onto q4_0's grid against its own float
distributions (distill.qat), saved as compressed-tensors that `export` with quant q4_0 writes bit for bit; QATConfig's
sequence count and length where none are given.

    - stage: qat
      steps: 200
    - stage: export
      quant: q4_0
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import field_validator

from slmkit.models.checkpoint import read_manifest
from slmkit.pipeline.registry import Stage, StageContext, StageKind, known_method, run_verb, verb_stage
from slmkit.results import StageResult
from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN
from slmkit.verbs import quantize
from slmkit.verbs.quantize import GRID, QAT_ONLY, QuantizeSettings

ONE_SHOT_ONLY = {"method", "act_order", "fake_quant"}
# The one grid QAT trains on, so a recipe need not name it (the CLI asks for --target), and QATConfig's sequence
# shape, which the stage has always written into run.json.
QAT_DEFAULTS = {"target": "gguf-q4_0", "calib_samples": QAT_SAMPLES, "calib_seq_len": QAT_SEQ_LEN}


class QuantizeSettingsStage(Stage):
    """What the quantize and qat stages share: their settings, checked."""

    fixed: ClassVar[dict] = {}  # settings the stage sets itself (the qat stage's method)

    def settings(self) -> QuantizeSettings:
        return self.verb_settings(**self.fixed)

    def config(self):
        return self.settings().method_config()


class QuantizeStage(verb_stage(quantize.VERB, QuantizeSettingsStage, exclude=set(QAT_ONLY), written_out=True)):
    @field_validator("method")
    @classmethod
    def _known(cls, method: str | None) -> str | None:
        from slmkit.compress import QUANT_METHODS  # torch: kept out of CLI start-up

        return method if method is None else known_method(QUANT_METHODS, method)


class QATStage(verb_stage(quantize.VERB, QuantizeSettingsStage, stage="qat",
                          exclude=(set(GRID) - {"target"}) | ONE_SHOT_ONLY, written_out=True,
                          own_defaults=QAT_DEFAULTS)):
    """QuantizeSettings' QAT training and calibration settings; one left out takes QATConfig's default."""

    fixed: ClassVar[dict] = {"method": "qat"}


def run_qat(stage: QATStage, context: StageContext) -> StageResult:
    output = run_verb(stage, context)
    # run.json keeps the training curve for the report's plot; the command prints only the numbers.
    output.summary["loss_curve"] = read_manifest(context.out)["config"]["loss_curve"]
    return output


RECIPE_STAGES = [StageKind(QuantizeStage), StageKind(QATStage, run_qat)]
