"""The `structured` stage: remove whole blocks, FFN channels and heads (a smaller dense model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.pipeline.registry import CalibratedStage, StageContext, StageOutput, register_stage
from slmkit.pipeline.stages.model_stage import compress_stage


class StructuredStage(CalibratedStage):
    stage: Literal["structured"]
    depth: int = 0
    ffn: int | None = None
    heads: int | None = None
    target_params: str | int | None = Field(None, description="Total parameters wanted, e.g. 100M.")

    def config(self):
        from slmkit.compress.structured import StructuredConfig, parse_count

        target = parse_count(str(self.target_params)) if self.target_params is not None else None
        return StructuredConfig(depth=self.depth, ffn=self.ffn, heads=self.heads, target_params=target)


def run_structured(stage: StructuredStage, context: StageContext) -> StageOutput:
    import slmkit

    return compress_stage(context, "structured, block", lambda lm, update: slmkit.prune(
        lm, stage.config(), stage.calibration(context), progress=update))


register_stage(StructuredStage, run_structured)
