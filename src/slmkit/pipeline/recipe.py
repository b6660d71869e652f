"""Recipes: a YAML list of stages, validated before anything runs.

    name: edge-chat
    model: smollm2-135m-instruct      # `slm run --model` overrides
    stages:
      - stage: quantize
        method: gptq
        target: gguf-q4_0
      - stage: export
        quant: q4_0
      - stage: eval
      - stage: bench

Model-making stages (prune, structured, quantize, export) each take the model
the previous one made. Measuring stages (eval, bench) measure the original and
the models made so far. An unknown stage or field, or a value the stage's
config refuses, is one error line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

import slmkit.pipeline.stages  # noqa: F401  (registers the built-in stages)
from slmkit.errors import SlmError
from slmkit.pipeline.registry import STAGES, Stage

DEFAULT_PROMPTS = ["What is the capital of France?",
                   "Why would I run a small language model on my laptop?",
                   "Write a haiku about the sea."]


def stage_union():
    """The discriminated union of every registered stage's schema (built from the registry, so a stage
    registered later is a recipe stage too)."""
    schemas = tuple(kind.schema for kind in STAGES.values())
    return Annotated[Union[schemas], Field(discriminator="stage")]  # noqa: UP007 (a runtime tuple of types)


class Recipe(BaseModel):
    """A recipe; `recipe_model()` is the schema that reads one, its stages typed by the stage registry."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    model: str | None = None
    data: str | None = Field(None, description="Calibration and evaluation text; none: data-free calibration.")
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS),
                               description="Answered by the original and the final model in the report.")
    max_new_tokens: int = 64
    stages: list[Stage]

    @model_validator(mode="after")
    def _stage_configs_are_valid(self):
        names, made = set(), set()  # every stage's directory; the models made so far
        made_onnx = False
        for index, stage in enumerate(self.stages):
            try:
                stage.config()
            except SlmError as exc:
                raise ValueError(f"stages[{index}] ({stage.stage}): {exc}") from None
            if stage.makes_model and made_onnx:
                raise ValueError(f"stages[{index}] ({stage.stage}): comes after an ONNX or ExecuTorch export, which "
                                 "only its own runtime runs; put model-making stages before it")
            # A stage that makes no model may measure none either (synth makes data): no `models` field.
            if not stage.makes_model and isinstance(getattr(stage, "models", None), list):
                unknown = [label for label in stage.models if label not in made | {"original"}]
                if unknown:
                    raise ValueError(f"stages[{index}].models: {', '.join(map(repr, unknown))} is not the original "
                                     f"or a model made before this stage ({', '.join(sorted(made)) or 'none yet'})")
            name = self.stage_dir(index)
            if name in names or name == "original":
                raise ValueError(f"stages[{index}]: name {name!r} is used twice")
            names.add(name)
            if stage.makes_model:
                made.add(name)
                made_onnx = made_onnx or stage.onnx_only_output()
        return self

    def stage_dir(self, index: int) -> str:
        stage = self.stages[index]
        return stage.name or f"{index + 1:02d}-{stage.stage}"

    def fingerprint(self) -> str:
        """Identifies what a run directory was made by, so a resume never mixes two recipes."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def recipe_model() -> type[Recipe]:
    """The Recipe schema for the stages registered now."""
    names = tuple(STAGES)
    if _RECIPE_MODELS.get("names") != names:
        _RECIPE_MODELS["names"] = names
        _RECIPE_MODELS["model"] = create_model("Recipe", __base__=Recipe,
                                               stages=(list[stage_union()], Field(min_length=1)))
    return _RECIPE_MODELS["model"]


_RECIPE_MODELS: dict = {}


def validate_recipe(raw) -> Recipe:
    return recipe_model().model_validate(raw)


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in STAGES:
            continue  # the discriminator's branch name, not a key in the file
        else:
            text += f".{part}" if text else str(part)
    return text


def parse_recipe(text: str, source: str) -> Recipe:
    """A validated Recipe from YAML text; `source` names the file in errors."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SlmError(f"{source}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise SlmError(f"{source}: nested too deeply to be a recipe (lists or mappings hundreds of levels "
                       "deep)") from None
    if not isinstance(raw, dict):
        raise SlmError(f"{source}: a recipe is a mapping with name and stages, got {type(raw).__name__}")
    try:
        return validate_recipe(raw)
    except ValidationError as exc:
        # A misspelt key also makes the real one "missing": name the misspelling.
        error = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        message = error["msg"].removeprefix("Value error, ")
        key = _location(error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            given = error["input"].get("stage") if isinstance(error["input"], dict) else None
            message = (f"unknown stage {given!r}" if given is not None else "missing") + \
                f"; choose one of {', '.join(STAGES)}"
            key += ".stage"
        raise SlmError(f"{source}: {key + ': ' if key else ''}{message}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"{path}: no such recipe file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SlmError(f"{path}: not UTF-8 text (byte {exc.start}); a recipe is a YAML file") from None
    return parse_recipe(text, str(path))
