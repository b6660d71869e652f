"""The `finetune` stage: SFT (full or LoRA) of the newest model; an interrupted stage resumes on the next
`slm run` from its last checkpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.pipeline.registry import Stage, StageContext, StageOutput, register_stage


class FinetuneStage(Stage):
    stage: Literal["finetune"]
    data: str | None = Field(None, description="Training file; default: the newest synth stage's data, else "
                                               "the run's --data.")
    task: str | None = None
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    merge: bool = False
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    packing: bool = False
    eval_data: str | None = None
    eval_every: int = 0
    save_every: int = 100
    seed: int = 0

    def settings(self, data: str, resume: bool = False):
        from slmkit.finetune import FinetuneConfig

        fields = self.model_dump(exclude={"stage", "name", "data"})
        return FinetuneConfig(data=data, resume=resume, **fields)


def training_file(stage: FinetuneStage, context: StageContext) -> str:
    from slmkit.errors import SlmError

    chosen = stage.data or context.newest_file("synth", "data") or context.data
    if chosen is None:
        raise SlmError("the finetune stage needs data: set its `data`, run a synth stage before it, or pass --data")
    return chosen


def run_finetune(stage: FinetuneStage, context: StageContext) -> StageOutput:
    import slmkit
    from slmkit.finetune import checkpoint_dir

    data = training_file(stage, context)
    resume = any(checkpoint_dir(context.out).glob("checkpoint-*"))  # a run cut short last time
    with context.progress("finetune, step") as update:
        result = slmkit.finetune(context.source, context.out, stage.settings(data, resume),
                                 progress=lambda step, total, facts: update(step, total))
    if not result.completed:
        from slmkit.errors import SlmError

        raise SlmError(f"finetune stopped at step {result.step} (SIGTERM); `slm run` again resumes it")
    from slmkit.finetune.run import HELD_BACK_FILE

    held_back = context.out / HELD_BACK_FILE
    return StageOutput({"data": data, **result.metrics, "loss_curve": result.curve,
                        "heldout": f"{context.out.name}/{HELD_BACK_FILE}" if held_back.is_file() else None},
                       context.out.name)


register_stage(FinetuneStage, run_finetune)
