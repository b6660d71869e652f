"""The `finetune` stage: SFT (full or LoRA) of the newest model; an interrupted stage resumes on the next
`slm run` from its last checkpoint."""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

from pydantic import Field

from slmkit.errors import SlmError
from slmkit.models.checkpoint import checkpoint_dir
from slmkit.pipeline.registry import StageContext, StageKind, verb_stage
from slmkit.results import StageResult
from slmkit.verbs import ProgressFactory, finetune


class FinetuneStage(verb_stage(finetune.VERB, exclude={"data"})):
    """FinetuneConfig's settings, and the data to train on."""

    data: str | None = Field(None, description="Training file; default: the newest synth stage's data, else "
                                               "the run's --data.")

    not_settings: ClassVar[set[str]] = {"stage", "name", "data"}  # fields the stage keeps for itself

    def settings(self, data: str, resume: bool = False):
        return self.verb_settings(data=data, resume=resume)

    def config(self):
        """The settings checked when the recipe is read (the training file may come from an earlier stage)."""
        return self.settings(self.data or "")


def training_file(stage: FinetuneStage, context: StageContext) -> str:
    chosen = stage.data or context.newest_file("synth", "data") or context.data
    if chosen is None:
        raise SlmError(f"the {stage.stage} stage needs data: set its `data`, run a synth stage before it, or pass "
                       "--data")
    return chosen


def run_training(stage: FinetuneStage, context: StageContext, **options) -> StageResult:
    """A finetune-like stage: its training verb (given `options`) on the newest model, resuming what a stopped run
    left; a run SIGTERM stopped is an error, so the stage is not taken as finished."""
    data = training_file(stage, context)
    resume = any(checkpoint_dir(context.out).glob("checkpoint-*"))  # a run cut short last time
    result = stage.verb.run(stage.settings(data, resume), context.source, context.out,
                            progress=steps(context.progress), **options)
    if not result.completed:
        raise SlmError(f"{stage.stage} stopped at step {result.step} (SIGTERM); `slm run` again resumes it")
    heldout = result.record["heldout"]
    return StageResult({"data": data, **result.summary, "loss_curve": result.curve,
                        "heldout": f"{context.out.name}/{heldout.name}" if heldout else None}, context.out)


def steps(progress: ProgressFactory) -> ProgressFactory:
    """A training verb's progress (`update(step, total, facts)`) on a recipe's bars, which show the steps."""

    @contextmanager
    def bar(description: str, unit: str | None = None):
        with progress(description, unit) as update:
            yield lambda step, total, facts: update(step, total)

    return bar


RECIPE_STAGES = [StageKind(FinetuneStage, run_training)]
