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
from typing import ClassVar, Literal

from pydantic import Field

from slmkit.pipeline.registry import Stage, StageContext, StageOutput, register_stage, write_json_atomic

DATA_FILE = "data.jsonl"
SAMPLE_PROMPTS = Path(__file__).resolve().parents[2] / "samples" / "kitchen-questions.txt"
STATS_FILE = "stats.json"


SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "max_new_tokens")
FILTERS = ("min_words", "max_words", "keep_unfinished", "repeat_ngram", "max_repeat_fraction", "echo_fraction",
           "dedup_threshold")


class SynthStage(Stage):
    """SynthConfig's settings, with its sampling and filter settings flat; one left out takes the default of
    SynthConfig / SamplingConfig / FilterConfig (kept there only), except `seed`."""

    stage: Literal["synth"]
    makes_model: ClassVar[bool] = False
    teacher: str | None = Field(None, description="Alias, directory, .gguf or hub id; default: the run's model.")
    prompts: str | None = Field(None, description=".jsonl ({\"prompt\": ...} per line) or .txt (one per line); "
                                                 "default: slmkit's 64 sample kitchen questions.")
    backend: str = "auto"
    n: int | None = None
    style: Literal["plain", "orca"] | None = None
    system: str | None = None
    samples_per_prompt: int | None = None
    batch_size: int | None = Field(None, description="A torch teacher's prompts per forward pass; default: "
                                                     "the size measured fastest on 2 CPU cores.")
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    seed: int = Field(0, description="Seeds every (prompt, sample) pair: a recipe writes the same data each time.")
    min_words: int | None = None
    max_words: int | None = None
    keep_unfinished: bool | None = None
    repeat_ngram: int | None = None
    max_repeat_fraction: float | None = None
    echo_fraction: float | None = None
    dedup_threshold: float | None = None

    def config(self):
        from slmkit.runtime import SamplingConfig
        from slmkit.synth import FilterConfig, SynthConfig

        chosen = self.model_dump(exclude={"stage", "name", "teacher", "prompts", "backend"}, exclude_none=True)
        sampling = SamplingConfig(**{key: chosen.pop(key) for key in SAMPLING if key in chosen})
        filters = FilterConfig(**{key: chosen.pop(key) for key in FILTERS if key in chosen})
        return SynthConfig(sampling=sampling, filters=filters, **chosen)


def partial_dir(out: Path) -> Path:
    """Where the answers gather while the stage runs: beside its directory, which `slm run` removes when it
    redoes a stopped stage."""
    return out.with_name(f"{out.name}.partial")


def run_synth(stage: SynthStage, context: StageContext) -> StageOutput:
    from slmkit.errors import SlmError
    from slmkit.models.checkpoint import atomic_directory
    from slmkit.runtime import open_model
    from slmkit.synth import synth
    from slmkit.synth.output import dropped_path

    teacher = stage.teacher or context.models[0].spec
    work = partial_dir(context.out)
    work.mkdir(parents=True, exist_ok=True)
    lm = open_model(teacher, backend=stage.backend)
    with context.progress(f"synth: {teacher} answering") as update:
        result = synth(lm, stage.prompts or SAMPLE_PROMPTS, work / DATA_FILE, stage.config(), progress=update)
    if result.records == 0:
        dropped = ", ".join(f"{reason} {count}" for reason, count in result.dropped_records.items() if count)
        raise SlmError(f"synth kept no answers (dropped: {dropped}); loosen the filters or raise max_new_tokens")
    written = [work / DATA_FILE, dropped_path(work / DATA_FILE)]
    stats = {**result.to_dict(), "out": f"{context.out.name}/{DATA_FILE}",
             "dropped_out": f"{context.out.name}/{written[1].name}"}

    def write(tmp: Path) -> None:
        for path in written:
            if path.is_file():
                shutil.copy2(path, tmp / path.name)
        write_json_atomic(tmp / STATS_FILE, stats)

    atomic_directory(context.out, write)
    shutil.rmtree(work, ignore_errors=True)
    summary = {key: stats[key] for key in ("teacher", "backend", "style", "prompts", "pairs", "records", "kept",
                                           "dropped_records", "new_tokens", "tokens_per_s")}
    return StageOutput({"data": stats["out"], **summary}, context.out.name)


register_stage(SynthStage, run_synth)
