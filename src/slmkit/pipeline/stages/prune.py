"""The `prune` stage: unstructured or N:M sparsity (magnitude, Wanda, SparseGPT)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from slmkit.pipeline.registry import CalibratedStage, StageContext, StageOutput, known_method, register_stage
from slmkit.pipeline.stages.model_stage import compress_stage


class PruneStage(CalibratedStage):
    stage: Literal["prune"]
    method: str = "wanda"
    sparsity: float | None = None
    pattern: str | None = None

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        from slmkit.compress import PRUNE_METHODS

        return known_method(PRUNE_METHODS, method)

    def config(self):
        from slmkit.compress.prune import prune_config

        return prune_config(self.method, sparsity=self.sparsity, pattern=self.pattern)


def run_prune(stage: PruneStage, context: StageContext) -> StageOutput:
    import slmkit

    return compress_stage(context, f"{stage.method} pruning, block", lambda lm, update: slmkit.prune(
        lm, stage.config(), stage.calibration(context), device="auto", progress=update))


register_stage(PruneStage, run_prune)
