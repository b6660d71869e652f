"""The `distill` stage: the newest model learns from a teacher (default: the run's original model), e.g. to
heal a structured-pruned model. An interrupted stage resumes on the next `slm run` from its last checkpoint.

    - stage: structured
      target_params: 100M
    - stage: distill          # the pruned model is the student, the original the teacher
      max_steps: 500
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from slmkit.pipeline.registry import StageContext, StageOutput, register_stage
from slmkit.pipeline.stages.finetune import FinetuneStage, run_training


class DistillStage(FinetuneStage):
    """DistillConfig's settings; one left out takes DistillConfig's default (kept there only)."""

    stage: Literal["distill"]
    teacher: str | None = Field(None, description="Alias, directory, .gguf or hub id; default: the run's model.")
    loss: str | None = None
    temperature: float | None = None
    alpha_ce: float | None = None
    beta: float | None = None
    teacher_cache: str | None = None
    top_k_logits: int | None = None
    hidden_loss: str | None = None
    layer_map: str | None = None
    hidden_weight: float | None = None
    attention_loss: bool | None = None
    attention_weight: float | None = None
    on_policy_ratio: float | None = None
    on_policy_max_new_tokens: int | None = None
    on_policy_temperature: float | None = None
    not_settings: ClassVar[set[str]] = FinetuneStage.not_settings | {"teacher"}

    @field_validator("layer_map", mode="before")
    @classmethod
    def _quoted_layer_map(cls, value):
        if value is not None and not isinstance(value, str):  # YAML reads an unquoted 3:6 as the number 186
            raise ValueError(f"write layer_map in quotes, e.g. '1:2,2:4,3:6' (YAML read {value!r})")
        return value

    def method_config(self) -> type:
        from slmkit.distill import DistillConfig

        return DistillConfig


def run_distill(stage: DistillStage, context: StageContext) -> StageOutput:
    import slmkit

    teacher = stage.teacher or context.models[0].spec
    output = run_training(stage, context, "distill", lambda out, config, progress: slmkit.distill(
        teacher, context.source, out, config, progress=progress))
    output.result["teacher"] = teacher
    return output


register_stage(DistillStage, run_distill)
