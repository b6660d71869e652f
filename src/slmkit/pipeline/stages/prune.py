"""The `prune` and `structured` stages: PruneSettings (slmkit.verbs.prune) run on the newest model, calibrated
on the run's --data, else the newest synth stage's answers, else text the model samples itself."""

from __future__ import annotations

from pydantic import Field, field_validator

from slmkit.pipeline.registry import StageKind, known_method, verb_stage
from slmkit.verbs import prune
from slmkit.verbs.prune import STRUCTURED_ONLY, PruneSettings


class PruneStage(verb_stage(prune.VERB, exclude=set(STRUCTURED_ONLY), written_out=True)):
    @field_validator("method")
    @classmethod
    def _known(cls, method: str | None) -> str | None:
        from slmkit.compress import PRUNE_METHODS  # torch: kept out of CLI start-up

        return method if method is None else known_method(PRUNE_METHODS, method)

    def settings(self) -> PruneSettings:
        return self.verb_settings(structured=self.stage == "structured")

    def config(self):
        return self.settings().method_config()


class StructuredStage(verb_stage(prune.VERB, stage="structured",
                                 exclude={"method", "sparsity", "pattern", "target_params"}, written_out=True)):
    # A number or a size as people write it (100M): wider than the CLI's text.
    target_params: str | int | None = Field(None, description="Total parameters wanted, e.g. 100M.")
    settings = PruneStage.settings
    config = PruneStage.config


RECIPE_STAGES = [StageKind(PruneStage), StageKind(StructuredStage)]
