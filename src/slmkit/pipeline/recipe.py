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
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmkit.errors import SlmError

# Stages the recipe format reserves for methods that have not landed yet.
PLANNED_STAGES = ("distill", "finetune", "synth")
DEFAULT_PROMPTS = ["What is the capital of France?",
                   "Why would I run a small language model on my laptop?",
                   "Write a haiku about the sea."]


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Sub-directory name; default NN-<stage>.")

    makes_model: ClassVar[bool] = True


class CalibratedStage(Stage):
    calib_samples: int = 128
    calib_seq_len: int = 512
    seed: int = 0


class PruneStage(CalibratedStage):
    stage: Literal["prune"]
    method: Literal["magnitude", "wanda", "sparsegpt"] = "wanda"
    sparsity: float | None = None
    pattern: str | None = None

    def config(self):
        from slmkit.compress import PRUNE_METHODS

        return PRUNE_METHODS[self.method](sparsity=self.sparsity, pattern=self.pattern)


class StructuredStage(CalibratedStage):
    stage: Literal["structured"]
    depth: int = 0
    ffn: int | None = None
    heads: int | None = None
    target_params: str | int | None = Field(None, description="Total parameters wanted, e.g. 100M.")

    def config(self):
        from slmkit.cli.prune import parse_count
        from slmkit.compress.structured import StructuredConfig

        target = parse_count(str(self.target_params)) if self.target_params is not None else None
        return StructuredConfig(depth=self.depth, ffn=self.ffn, heads=self.heads, target_params=target)


class QuantizeStage(CalibratedStage):
    stage: Literal["quantize"]
    method: Literal["rtn", "gptq", "awq"] = "gptq"
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    target: str | None = None
    act_order: bool = False
    observer: str | None = None
    fake_quant: bool = False

    def config(self):
        from slmkit.compress.formats import check_compressed_tensors
        from slmkit.pipeline.stages import quant_config

        config = quant_config(self.method, bits=self.bits, group_size=self.group_size, symmetric=self.symmetric,
                              target=self.target, act_order=self.act_order, observer=self.observer)
        if not self.fake_quant:
            check_compressed_tensors(config)
        return config


class ExportStage(Stage):
    stage: Literal["export"]
    format: Literal["gguf", "onnx"] = "gguf"
    quant: Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0"] = Field("f16", description="GGUF only.")

    def config(self):
        # Against the default, not model_fields_set: the recipe stored in a run directory writes every field.
        if self.format == "onnx" and self.quant != "f16":
            raise SlmError("quant applies to format gguf; an ONNX export keeps float32 weights (drop quant)")
        return None


class MeasureStage(Stage):
    makes_model: ClassVar[bool] = False
    models: Literal["all", "last"] | list[str] = Field(
        "all", description="all: the original and every model made so far; last: the newest; or names.")

    def config(self):
        return None


class TorchMeasureStage(MeasureStage):
    weights: Literal["float32", "bfloat16", "int8"] = Field(
        "float32", description="As --weights, for the models the torch backend runs (a GGUF keeps its own).")


class EvalStage(TorchMeasureStage):
    stage: Literal["eval"]
    data: str | None = Field(None, description="Evaluation file; default: the run's --data, else a built-in text.")
    task: str | None = None
    max_length: int | None = None
    limit: int | None = None


class BenchStage(TorchMeasureStage):
    stage: Literal["bench"]
    prompt_tokens: int = 512
    gen_tokens: int = 128
    repeats: int = 3
    compile: bool = Field(False, description="As --compile (causal LMs the torch backend runs).")


AnyStage = Annotated[PruneStage | StructuredStage | QuantizeStage | ExportStage | EvalStage | BenchStage,
                     Field(discriminator="stage")]


STAGE_NAMES = ("prune", "structured", "quantize", "export", "eval", "bench")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    model: str | None = None
    data: str | None = Field(None, description="Calibration and evaluation text; none: data-free calibration.")
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS),
                               description="Answered by the original and the final model in the report.")
    max_new_tokens: int = 64
    stages: list[AnyStage] = Field(min_length=1)

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
                raise ValueError(f"stages[{index}] ({stage.stage}): comes after an ONNX export, which only "
                                 "onnxruntime runs; put model-making stages before it")
            if not stage.makes_model and isinstance(stage.models, list):
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
                made_onnx = made_onnx or (stage.stage == "export" and stage.format == "onnx")
        return self

    def stage_dir(self, index: int) -> str:
        stage = self.stages[index]
        return stage.name or f"{index + 1:02d}-{stage.stage}"

    def fingerprint(self) -> str:
        """Identifies what a run directory was made by, so a resume never mixes two recipes."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in STAGE_NAMES:
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
    if not isinstance(raw, dict):
        raise SlmError(f"{source}: a recipe is a mapping with name and stages, got {type(raw).__name__}")
    for index, stage in enumerate(raw.get("stages") or []):
        kind = stage.get("stage") if isinstance(stage, dict) else None
        if kind in PLANNED_STAGES:
            raise SlmError(f"{source}: stages[{index}].stage: {kind!r} is not available in this version of slmkit")
    try:
        return Recipe.model_validate(raw)
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
                f"; choose one of {', '.join(STAGE_NAMES)}"
            key += ".stage"
        raise SlmError(f"{source}: {key + ': ' if key else ''}{message}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"{path}: no such recipe file")
    return parse_recipe(path.read_text(), str(path))
