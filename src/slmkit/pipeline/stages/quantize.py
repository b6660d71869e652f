"""The `quantize` stage: RTN, GPTQ or AWQ, saved as compressed-tensors (or float values on the grid)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from slmkit.pipeline.registry import CalibratedStage, StageContext, StageOutput, known_method, register_stage
from slmkit.pipeline.stages.model_stage import compress_stage


class QuantizeStage(CalibratedStage):
    stage: Literal["quantize"]
    method: str = "gptq"
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    target: str | None = None
    act_order: bool = False
    observer: str | None = None
    fake_quant: bool = False

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        from slmkit.compress import QUANT_METHODS

        return known_method(QUANT_METHODS, method)

    def config(self):
        from slmkit.compress.formats import check_compressed_tensors
        from slmkit.compress.quantize import quant_config

        config = quant_config(self.method, bits=self.bits, group_size=self.group_size, symmetric=self.symmetric,
                              target=self.target, act_order=self.act_order, observer=self.observer)
        if not self.fake_quant:
            check_compressed_tensors(config)
        return config


def run_quantize(stage: QuantizeStage, context: StageContext) -> StageOutput:
    import slmkit

    return compress_stage(context, f"{stage.method} quantization, block", lambda lm, update: slmkit.quantize(
        lm, stage.config(), stage.calibration(context), fake_quant=stage.fake_quant, target=stage.target,
        device="auto", progress=update))


register_stage(QuantizeStage, run_quantize)
