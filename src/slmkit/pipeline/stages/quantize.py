"""The `quantize` stage: RTN, GPTQ or AWQ, saved as compressed-tensors (or float values on the grid). Its
settings are QuantizeSettings' (slmkit.verbs.quantize) bar QAT's, which the `qat` stage takes; both run the same
stage on the newest model."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator

from slmkit.pipeline.registry import Stage, StageContext, known_method, register_stage, with_settings
from slmkit.verbs import StageResult, quantize
from slmkit.verbs.quantize import QAT_ONLY, QuantizeSettings


class QuantizeSettingsStage(Stage):
    """What the quantize and qat stages share: their settings, checked."""

    config_class: ClassVar[type] = QuantizeSettings
    fixed: ClassVar[dict] = {}  # settings the stage sets itself (the qat stage's method)

    def settings(self) -> QuantizeSettings:
        return self.verb_settings(**self.fixed)

    def config(self):
        return self.settings().method_config()


class QuantizeStage(with_settings(QuantizeSettings, QuantizeSettingsStage, exclude=set(QAT_ONLY), written_out=True)):
    stage: Literal["quantize"]

    @field_validator("method")
    @classmethod
    def _known(cls, method: str | None) -> str | None:
        from slmkit.compress import QUANT_METHODS

        return method if method is None else known_method(QUANT_METHODS, method)


def run_quantize(stage: QuantizeSettingsStage, context: StageContext) -> StageResult:
    return quantize.run(stage.settings(), context.source, context.out, progress=context.progress,
                        data=context.calibration_data())


register_stage(QuantizeStage, run_quantize)
