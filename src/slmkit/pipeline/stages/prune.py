"""The `prune` and `structured` stages: PruneSettings (slmkit.verbs.prune) run on the newest model, calibrated
on the run's --data, else the newest synth stage's answers, else text the model samples itself."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from slmkit.pipeline.registry import Stage, StageContext, known_method, register_stage, with_settings
from slmkit.verbs import StageResult, prune
from slmkit.verbs.prune import STRUCTURED_ONLY, PruneSettings


class PruneStage(with_settings(PruneSettings, Stage, exclude=set(STRUCTURED_ONLY), written_out=True)):
    stage: Literal["prune"]
    config_class: ClassVar[type] = PruneSettings

    @field_validator("method")
    @classmethod
    def _known(cls, method: str | None) -> str | None:
        from slmkit.compress import PRUNE_METHODS

        return method if method is None else known_method(PRUNE_METHODS, method)

    def settings(self) -> PruneSettings:
        return self.verb_settings(structured=self.stage == "structured")

    def config(self):
        return self.settings().method_config()


class StructuredStage(with_settings(PruneSettings, Stage, exclude={"method", "sparsity", "pattern", "target_params"},
                                    written_out=True)):
    stage: Literal["structured"]
    # A number or a size as people write it (100M): wider than the CLI's text.
    target_params: str | int | None = Field(None, description="Total parameters wanted, e.g. 100M.")
    config_class: ClassVar[type] = PruneSettings
    settings = PruneStage.settings
    config = PruneStage.config


def run_prune(stage: PruneStage | StructuredStage, context: StageContext) -> StageResult:
    return prune.run(stage.settings(), context.source, context.out, progress=context.progress,
                     data=context.calibration_data())


register_stage(PruneStage, run_prune)
register_stage(StructuredStage, run_prune)
