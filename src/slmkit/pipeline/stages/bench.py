"""The `bench` stage: speed and memory of the original and the models made so far."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from slmkit.pipeline.registry import RunModel, StageContext, StageKind, measure_each, one_bar, verb_stage
from slmkit.pipeline.stages.eval import TorchMeasureStage
from slmkit.results import StageResult
from slmkit.verbs import bench
from slmkit.verbs.bench import BenchSettings


class BenchStage(verb_stage(bench.VERB, TorchMeasureStage, exclude={"weights"}, written_out=True)):
    """BenchSettings' recipe settings and which models to measure."""

    not_settings: ClassVar[set[str]] = {"stage", "name", "models"}  # fields the stage keeps for itself

    def config(self) -> BenchSettings:
        return self.verb_settings()

    def settings(self, model: RunModel) -> BenchSettings:
        """The settings `model` is benched with: `weights` and `compile` apply to the models torch runs."""
        return replace(self.config(), weights=self.weights_for(model), compile=self.compile and self.on_torch(model))


def run_bench(stage: BenchStage, context: StageContext) -> StageResult:
    return measure_each(stage, context, lambda model, update: stage.verb.run(
        stage.settings(model), model.spec, progress=one_bar(update), fresh_process=True).summary)


RECIPE_STAGES = [StageKind(BenchStage, run_bench)]
