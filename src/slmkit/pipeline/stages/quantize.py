"""The `quantize` and `qat` stages: QuantizeSettings (slmkit.verbs.quantize) run on the newest model, calibrated
on the run's --data, else the newest synth stage's answers, else text the model samples itself.

The quantize stage takes them bar QAT's: RTN, GPTQ or AWQ, saved as compressed-tensors (or float values on the
grid), or a GGUF plan (target gguf). The qat stage is the verb with method qat: the newest model trained onto q4_0's
grid against its own float distributions (distill.qat), saved as compressed-tensors that `export` with quant q4_0
writes bit for bit; QATConfig's sequence count and length where none are given. With target gguf and a budget it
plans first and trains every matrix on its planned grid (distill.plan_qat). After a quantize stage that made a GGUF
plan it trains that plan, whatever its target says, against the model the plan was made from; `export` then writes
the trained plan bit for bit.

    - stage: qat
      steps: 200
    - stage: export
      quant: q4_0

    - stage: quantize
      target: gguf
      max_kl: 0.02
    - stage: qat
      steps: 200
    - stage: export
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from pydantic import field_validator

from slmkit.errors import SlmError
from slmkit.models.checkpoint import read_manifest
from slmkit.models.loading import local_path
from slmkit.pipeline.registry import Stage, StageContext, StageKind, known_method, verb_stage
from slmkit.results import StageResult
from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN
from slmkit.targets import PLANNED_TARGET
from slmkit.verbs import quantize
from slmkit.verbs.quantize import GRID, QAT_ONLY, QuantizeSettings

ONE_SHOT_ONLY = {"method", "act_order", "fake_quant"}
# q4_0's grid, so a recipe need not name it (the CLI asks for --target; a model with a GGUF plan trains on the
# plan's grids: run_qat), and QATConfig's sequence shape, which the stage has always written into run.json.
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
    from slmkit.compress.gguf_plan import read_plan  # torch: kept out of CLI start-up

    settings = stage.settings()
    if read_plan(local_path(context.source)) is not None:  # a planned model trains on its plan's grids
        budget = [name for name in ("size", "bpw", "max_kl") if getattr(settings, name) is not None]
        if budget:
            raise SlmError(f"{context.source} has a GGUF plan, which the qat stage trains as it is: drop "
                           f"{', '.join(budget)} (a budget plans a float model)")
        settings = dataclasses.replace(settings, target=PLANNED_TARGET)
    output = stage.verb.run(settings, context.source, context.out, progress=context.progress,
                            data=context.calibration_data())
    # run.json keeps the training curve for the report's plot; the command prints only the numbers.
    output.summary["loss_curve"] = read_manifest(context.out)["config"]["loss_curve"]
    return output


RECIPE_STAGES = [StageKind(QuantizeStage), StageKind(QATStage, run_qat)]
