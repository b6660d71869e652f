"""The stage registry: each recipe stage's schema and runner.

A stage is a function from a checkpoint to a checkpoint (or to measurements):
its runner gets the path of the newest model (`StageContext.source`) and the
directory to write (`StageContext.out`), and returns what it measured and where
its output is. The recipe schema and `slm run`'s executor are built from this
registry alone. A verb's stage is made from its record (`verb_stage`) and
registered by slmkit.pipeline.stages, which walks the verbs; any other stage is
a schema and a runner given to `register_stage`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from slmkit.models.checkpoint import atomic_directory, write_atomic
from slmkit.results import StageResult
from slmkit.schema import stage_fields
from slmkit.verbs import ProgressFactory, Verb


@dataclass
class RunModel:
    """A model the run holds: the original, or what a stage made."""

    label: str  # "original" or the stage's directory name
    spec: str  # what runtime.open_model opens
    stage: str  # "original", "prune", "quantize", ...


@dataclass
class StageContext:
    """What a stage's runner is given."""

    out: Path  # the directory to write (atomically); it does not exist yet
    models: list[RunModel]  # the original and every model made so far; the last is the newest
    data: str | None  # the run's --data (calibration and evaluation text); None: data-free
    progress: ProgressFactory
    earlier: list[dict] = field(default_factory=list)  # the run.json records of the stages before this one

    @property
    def source(self) -> str:
        """The checkpoint a model-making stage starts from."""
        return self.models[-1].spec

    def calibration_data(self) -> str | None:
        """The text a stage calibrates on: the run's --data, else the newest synth stage's answers (the domain
        the model is made for), else none (the model writes its own)."""
        return self.data or self.newest_file("synth", "data")

    def newest_file(self, stage: str, key: str) -> str | None:
        """The file the newest earlier `stage` stage named in its result under `key` (a path relative to the
        run directory), e.g. the data a synth stage wrote or the rows a finetune stage held back."""
        for record in reversed(self.earlier):
            if record["stage"] == stage and (record.get("result") or {}).get(key):
                return str(self.out.parent / record["result"][key])
        return None


class Stage(BaseModel):
    """A recipe stage's settings. A subclass declares `stage: Literal["name"]` and its own fields."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Sub-directory name; default NN-<stage>.")

    makes_model: ClassVar[bool] = True  # False: it measures the models (eval, bench) or makes data (synth)
    stage_defaults: ClassVar[dict] = {}  # a setting's default that is the stage's own, not its config's
    config_class: ClassVar[type | None] = None  # the verb's settings its fields fill (with_settings)
    verb: ClassVar[Verb | None] = None  # the verb it runs (verb_stage); None: a stage of its own
    not_settings: ClassVar[set[str]] = {"stage", "name"}  # fields the stage keeps for itself

    def verb_settings(self, **fixed):
        """`config_class` made from the settings the recipe gave (one left out: the config's default) and those
        the stage sets itself (`fixed`)."""
        return self.config_class(**self.model_dump(exclude=self.not_settings, exclude_none=True), **fixed)

    def config(self):
        """The method's config, checked (a bad value is an error when the recipe is read); None if none."""
        return None

    def onnx_only_output(self) -> bool:
        """Whether the model it makes runs only on onnxruntime (no later stage can load it with torch)."""
        return False


def with_settings(config_class: type, base: type[Stage], exclude: set[str] = frozenset(), *,
                  written_out: bool = False, own_defaults: dict | None = None, **own_fields) -> type[Stage]:
    """`base` with a field per setting of `config_class` that a recipe may give (slmkit.schema.stage_fields), bar
    `exclude` (fields the stage declares itself), then `own_fields` (pydantic `create_model` fields).
    `own_defaults` are kept on the class (`stage_defaults`)."""
    fields = stage_fields(config_class, exclude, written_out=written_out, own_defaults=own_defaults)
    stage = create_model(f"{config_class.__name__}Settings", __base__=base, **fields, **own_fields)
    stage.config_class, stage.stage_defaults = config_class, dict(own_defaults or {})
    return stage


def verb_stage(verb: Verb, base: type[Stage] = Stage, *, stage: str | None = None, **options) -> type[Stage]:
    """The recipe stage `stage` (default: the verb's name) that runs `verb`: `base` with the verb's settings as
    fields (`with_settings`, given `options`) and the verb's `makes_model`. Example:
    `class PruneStage(verb_stage(prune.VERB, exclude={"depth"}, written_out=True))`."""
    made = with_settings(verb.settings, base, **options, stage=(Literal[stage or verb.name], ...))
    made.verb, made.makes_model = verb, verb.makes_model
    return made


def known_method(methods: dict, method: str) -> str:
    """A stage's `method` field, checked against its registry (so a method registered later is accepted)."""
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(methods)}")
    return method


class MeasureStage(Stage):
    makes_model: ClassVar[bool] = False
    models: Literal["all", "last"] | list[str] = Field(
        "all", description="all: the original and every model made so far; last: the newest; or names.")

    def chosen(self, models: list[RunModel]) -> list[RunModel]:
        if self.models == "all":
            return models
        if self.models == "last":
            return models[-1:]
        by_label = {model.label: model for model in models}  # names were checked when the recipe was read
        return [by_label[label] for label in self.models]


# A runner returns what the stage made: run.json records its summary and where `out` is in the run directory.
Runner = Callable[[Stage, StageContext], StageResult]


def run_verb(stage: Stage, context: StageContext) -> StageResult:
    """A model-making verb's stage as it usually runs: the verb, with the stage's `settings()`, on the newest model
    into the stage's directory, calibrated (where it calibrates) on `StageContext.calibration_data`."""
    return stage.verb.run(stage.settings(), context.source, context.out, progress=context.progress,
                          data=context.calibration_data())


@dataclass(frozen=True)
class StageKind:
    schema: type[Stage]
    run: Runner = run_verb


STAGES: dict[str, StageKind] = {}


def register_stage(schema: type[Stage], run: Runner) -> type[Stage]:
    """Make `schema` (whose `stage` field is a one-value Literal) a recipe stage run by `run`."""
    (name,) = schema.model_fields["stage"].annotation.__args__
    STAGES[name] = StageKind(schema, run)
    return schema


def measure_each(stage: MeasureStage, context: StageContext,
                 measure: Callable[[RunModel, Callable[[int, int], None]], dict]) -> StageResult:
    """A measuring stage's usual shape: `measure` every chosen model, all results in one results.json."""
    results = {}
    for model in stage.chosen(context.models):
        with context.progress(f"{stage.stage}: {model.label}") as update:
            results[model.label] = measure(model, update)
    atomic_directory(context.out, lambda tmp: write_json_atomic(tmp / "results.json", results))
    return StageResult(results, context.out)


def one_bar(update: Callable[[int, int], None]) -> ProgressFactory:
    """A progress factory whose every bar is `update`: what a verb reports while it measures one model moves that
    model's bar (measure_each's)."""
    return lambda description, unit=None: nullcontext(update)


def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
