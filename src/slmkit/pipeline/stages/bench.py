"""The `bench` stage: speed and memory of the original and the models made so far."""

from __future__ import annotations

from typing import ClassVar, Literal

from slmkit.evaluate.config import BenchSettings
from slmkit.pipeline.registry import (RunModel, StageContext, StageOutput, measure_each, register_stage,
                                      with_settings)
from slmkit.pipeline.stages.eval import TorchMeasureStage


class BenchStage(with_settings(BenchSettings, TorchMeasureStage, exclude={"weights"}, written_out=True)):
    """BenchSettings' recipe settings and which models to measure."""

    stage: Literal["bench"]

    config_class: ClassVar[type] = BenchSettings
    not_settings: ClassVar[set[str]] = {"stage", "name", "models"}  # fields the stage keeps for itself

    def config(self) -> BenchSettings:
        return self.config_class(**self.model_dump(exclude=self.not_settings))


def run_bench(stage: BenchStage, context: StageContext) -> StageOutput:
    from slmkit.evaluate.bench import bench_in_fresh_process

    config = stage.config()

    def measure(model: RunModel, update) -> dict:
        on_torch = {"weights": config.weights, "compile_decode": config.compile} if stage.on_torch(model) else {}
        return bench_in_fresh_process(model.spec, prompt_tokens=config.prompt_tokens, gen_tokens=config.gen_tokens,
                                      repeats=config.repeats, n_ctx=config.n_ctx, **on_torch)

    return measure_each(stage, context, measure)


register_stage(BenchStage, run_bench)
