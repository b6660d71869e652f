"""The `finetune` stage: SFT (full or LoRA) of the newest model; an interrupted stage resumes on the next
`slm run` from its last checkpoint."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from slmkit.pipeline.registry import Stage, StageContext, StageOutput, register_stage


class FinetuneStage(Stage):
    """FinetuneConfig's settings; one left out takes FinetuneConfig's default (kept there only)."""

    stage: Literal["finetune"]
    data: str | None = Field(None, description="Training file; default: the newest synth stage's data, else "
                                               "the run's --data.")
    task: str | None = None
    lora: bool | None = None
    lora_rank: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_targets: str | None = None
    merge: bool | None = None
    epochs: float | None = None
    max_steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    max_length: int | None = None
    packing: bool | None = None
    eval_data: str | None = None
    eval_fraction: float | None = None
    eval_every: int | None = None
    save_every: int | None = None
    seed: int | None = None

    not_settings: ClassVar[set[str]] = {"stage", "name", "data"}  # fields the stage keeps for itself

    def method_config(self) -> type:
        """The config class the stage's settings fill."""
        from slmkit.finetune import FinetuneConfig

        return FinetuneConfig

    def settings(self, data: str, resume: bool = False):
        chosen = self.model_dump(exclude=self.not_settings, exclude_none=True)
        return self.method_config()(data=data, resume=resume, **chosen)


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
