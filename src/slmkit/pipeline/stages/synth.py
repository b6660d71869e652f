"""The `synth` stage: a teacher (default: the run's original model) writes chat training data.

    - stage: synth
      prompts: questions.txt        # .jsonl ({"prompt": ...}) or .txt
      style: orca
      n: 500
    - stage: finetune               # trains the newest model on the synth stage's data.jsonl

It makes data, not a model (`makes_model` False): the stages after it keep taking the newest model, and a
finetune stage without `data` reads this stage's `result["data"]` (`StageContext.newest_file("synth",
"data")`), the path of NN-synth/data.jsonl relative to the run directory. The answers are written to
NN-synth.partial/ as they come, so a run stopped mid-stage resumes them; the finished stage directory
(data.jsonl, data.dropped.jsonl, stats.json) appears in one rename.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from slmkit.errors import SlmError
from slmkit.models.checkpoint import atomic_directory
from slmkit.pipeline.registry import StageContext, StageKind, verb_stage, write_json_atomic
from slmkit.results import StageResult
from slmkit.synthesis.output import dropped_path
from slmkit.verbs import synth
from slmkit.verbs.synth import SynthSettings

DATA_FILE = "data.jsonl"
SAMPLE_PROMPTS = Path(__file__).resolve().parents[2] / "samples" / "kitchen-questions.txt"
STATS_FILE = "stats.json"


class SynthStage(verb_stage(synth.VERB, exclude={"prompts"})):
    """SynthSettings' settings, flat; one left out takes SynthSettings' default (kept there only), bar those
    a recipe states its own way: the teacher and the prompts (default: the run's model, slmkit's sample
    questions), the backend and the seed (default 0: a recipe writes the same data each time)."""

    teacher: str | None = Field(None, description="Alias, directory, .gguf or hub id; default: the run's model.")
    prompts: str | None = Field(None, description=".jsonl ({\"prompt\": ...} per line) or .txt (one per line); "
                                                 "default: slmkit's 64 sample kitchen questions.")
    backend: str = "auto"  # a recipe key since before RuntimeSettings, which keeps the backend off recipes
    seed: int = Field(0, description="Seeds every (prompt, sample) pair: a recipe writes the same data each time.")

    not_settings: ClassVar[set[str]] = {"stage", "name", "teacher", "prompts"}  # fields the stage keeps for itself

    def settings(self) -> SynthSettings:
        return self.verb_settings(prompts=self.prompts or SAMPLE_PROMPTS)

    def config(self):
        return self.settings().synth_config()


def partial_dir(out: Path) -> Path:
    """Where the answers gather while the stage runs: beside its directory, which `slm run` removes when it
    redoes a stopped stage."""
    return out.with_name(f"{out.name}.partial")


def run_synth(stage: SynthStage, context: StageContext) -> StageResult:
    work = partial_dir(context.out)
    work.mkdir(parents=True, exist_ok=True)
    result = stage.verb.run(stage.settings(), stage.teacher or context.models[0].spec, work / DATA_FILE,
                            progress=context.progress).summary
    if result["records"] == 0:
        dropped = ", ".join(f"{reason} {count}" for reason, count in result["dropped_records"].items() if count)
        raise SlmError(f"synth kept no answers (dropped: {dropped}); loosen the filters or raise max_new_tokens")
    written = [work / DATA_FILE, dropped_path(work / DATA_FILE)]
    stats = {**result, "out": f"{context.out.name}/{DATA_FILE}", "dropped_out": f"{context.out.name}/{written[1].name}"}

    def write(tmp: Path) -> None:
        for path in written:
            if path.is_file():
                shutil.copy2(path, tmp / path.name)
        write_json_atomic(tmp / STATS_FILE, stats)

    atomic_directory(context.out, write)
    shutil.rmtree(work, ignore_errors=True)
    summary = {key: stats[key] for key in ("teacher", "backend", "style", "prompts", "pairs", "records", "kept",
                                           "dropped_records", "new_tokens", "tokens_per_s")}
    return StageResult({"data": stats["out"], **summary}, context.out)


RECIPE_STAGES = [StageKind(SynthStage, run_synth)]
