"""The `bench` stage: speed and memory of the original and the models made so far."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.pipeline.registry import RunModel, StageContext, StageOutput, measure_each, register_stage
from slmkit.pipeline.stages.eval import TorchMeasureStage


class BenchStage(TorchMeasureStage):
    stage: Literal["bench"]
    prompt_tokens: int = 512
    gen_tokens: int = 128
    repeats: int = 3
    compile: bool = Field(False, description="As --compile (causal LMs the torch backend runs).")


def run_bench(stage: BenchStage, context: StageContext) -> StageOutput:
    from slmkit.evaluate.bench import bench_in_fresh_process

    def measure(model: RunModel, update) -> dict:
        on_torch = {"weights": stage.weights, "compile_decode": stage.compile} if stage.on_torch(model) else {}
        return bench_in_fresh_process(model.spec, prompt_tokens=stage.prompt_tokens, gen_tokens=stage.gen_tokens,
                                      repeats=stage.repeats, n_ctx=stage.prompt_tokens + stage.gen_tokens + 16,
                                      **on_torch)

    return measure_each(stage, context, measure)


register_stage(BenchStage, run_bench)
