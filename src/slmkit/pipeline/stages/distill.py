"""The `distill` stage: the newest model learns from a teacher (default: the run's original model), e.g. to
heal a structured-pruned model. An interrupted stage resumes on the next `slm run` from its last checkpoint.

    - stage: structured
      target_params: 100M
    - stage: distill          # the pruned model is the student, the original the teacher
      max_steps: 500
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from slmkit.pipeline.registry import StageContext, StageKind, verb_stage
from slmkit.pipeline.stages.finetune import FinetuneStage, run_training
from slmkit.results import StageResult
from slmkit.verbs import distill


class DistillStage(verb_stage(distill.VERB, FinetuneStage, exclude={"data"})):
    """DistillConfig's settings, the data, and the teacher."""

    teacher: str | None = Field(None, description="Alias, directory, .gguf or hub id; default: the run's model.")
    not_settings: ClassVar[set[str]] = FinetuneStage.not_settings | {"teacher"}

    @field_validator("layer_map", mode="before")
    @classmethod
    def _quoted_layer_map(cls, value):
        if value is not None and not isinstance(value, str):  # YAML reads an unquoted 3:6 as the number 186
            raise ValueError(f"write layer_map in quotes, e.g. '1:2,2:4,3:6' (YAML read {value!r})")
        return value


def run_distill(stage: DistillStage, context: StageContext) -> StageResult:
    teacher = stage.teacher or context.models[0].spec
    output = run_training(stage, context, teacher=teacher)
    output.summary["teacher"] = teacher
    return output


RECIPE_STAGES = [StageKind(DistillStage, run_distill)]
