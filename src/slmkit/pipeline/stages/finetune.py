"""The `finetune` stage: SFT (full or LoRA) of the newest model; an interrupted stage resumes on the next
`slm run` from its last checkpoint."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from slmkit.finetune.config import FinetuneConfig
from slmkit.pipeline.registry import Stage, StageContext, StageOutput, register_stage, with_settings


class FinetuneStage(with_settings(FinetuneConfig, Stage, exclude={"data"})):
    """FinetuneConfig's settings, and the data to train on."""

    stage: Literal["finetune"]
    data: str | None = Field(None, description="Training file; default: the newest synth stage's data, else "
                                               "the run's --data.")

    not_settings: ClassVar[set[str]] = {"stage", "name", "data"}  # fields the stage keeps for itself
    config_class: ClassVar[type] = FinetuneConfig

    def settings(self, data: str, resume: bool = False):
        chosen = self.model_dump(exclude=self.not_settings, exclude_none=True)
        return self.config_class(data=data, resume=resume, **chosen)

    def config(self):
        """The settings checked when the recipe is read (the training file may come from an earlier stage)."""
        return self.settings(self.data or "")


def training_file(stage: FinetuneStage, context: StageContext) -> str:
    from slmkit.errors import SlmError

    chosen = stage.data or context.newest_file("synth", "data") or context.data
    if chosen is None:
        raise SlmError(f"the {stage.stage} stage needs data: set its `data`, run a synth stage before it, or pass "
                       "--data")
    return chosen


def run_finetune(stage: FinetuneStage, context: StageContext) -> StageOutput:
    import slmkit

    return run_training(stage, context, "finetune", lambda out, config, progress: slmkit.finetune(
        context.source, out, config, progress=progress))


def run_training(stage: FinetuneStage, context: StageContext, verb: str, train) -> StageOutput:
    """Run `train(out, config, progress)` for a finetune-like stage, resuming what a stopped run left."""
    from slmkit.errors import SlmError
    from slmkit.finetune import checkpoint_dir
    from slmkit.finetune.run import HELD_BACK_FILE

    data = training_file(stage, context)
    resume = any(checkpoint_dir(context.out).glob("checkpoint-*"))  # a run cut short last time
    with context.progress(f"{verb}, step") as update:
        result = train(context.out, stage.settings(data, resume), lambda step, total, facts: update(step, total))
    if not result.completed:
        raise SlmError(f"{verb} stopped at step {result.step} (SIGTERM); `slm run` again resumes it")
    held_back = context.out / HELD_BACK_FILE
    return StageOutput({"data": data, **result.metrics, "loss_curve": result.curve,
                        "heldout": f"{context.out.name}/{HELD_BACK_FILE}" if held_back.is_file() else None},
                       context.out.name)


register_stage(FinetuneStage, run_finetune)
