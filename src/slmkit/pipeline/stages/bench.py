"""The `bench` stage: speed and memory of the original and the models made so far."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

from slmkit.pipeline.registry import (RunModel, StageContext, measure_each, one_bar, register_stage,
                                      with_settings)
from slmkit.pipeline.stages.eval import TorchMeasureStage
from slmkit.verbs import StageResult, bench
from slmkit.verbs.bench import BenchSettings


class BenchStage(with_settings(BenchSettings, TorchMeasureStage, exclude={"weights"}, written_out=True)):
    """BenchSettings' recipe settings and which models to measure."""

    stage: Literal["bench"]

    config_class: ClassVar[type] = BenchSettings
    not_settings: ClassVar[set[str]] = {"stage", "name", "models"}  # fields the stage keeps for itself

    def config(self) -> BenchSettings:
        return self.verb_settings()

    def settings(self, model: RunModel) -> BenchSettings:
        """The settings `model` is benched with: `weights` and `compile` apply to the models torch runs."""
        return replace(self.config(), weights=self.weights_for(model), compile=self.compile and self.on_torch(model))


def run_bench(stage: BenchStage, context: StageContext) -> StageResult:
    return measure_each(stage, context, lambda model, update: bench.run(
        stage.settings(model), model.spec, progress=one_bar(update), fresh_process=True).summary)


register_stage(BenchStage, run_bench)
