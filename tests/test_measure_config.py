"""eval, bench and export: one config per verb is the command's options, the recipe stage's fields and what the
library verb takes (slmkit.schema), with the same defaults and the same one-line errors."""

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slmkit
from slmkit.cli.main import app
from slmkit.evaluation.config import BenchSettings, EvalConfig, EvalSettings
from slmkit.exporters.config import ExportSettings, GGUFConfig, OnnxConfig
from slmkit.pipeline.recipe import parse_recipe
from slmkit.pipeline.stages.bench import BenchStage
from slmkit.pipeline.stages.eval import EvalStage
from slmkit.pipeline.stages.export import ExportStage
from slmkit.schema import settings

# verb, its settings, its recipe stage, the library verb the command calls
VERBS = [("eval", EvalSettings, EvalStage, "evaluate"), ("bench", BenchSettings, BenchStage, "bench"),
         ("export", ExportSettings, ExportStage, "export")]
STAGE_MODULES = {"eval": "evaluation", "bench": "bench", "export": "export"}  # slmkit.verbs.<module>: each verb's run
# The name each verb module opens its model with (export opens a float32 torch model, as compression does).
OPENERS = {"export": "open_float32"}


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("small models run on small machines.\n")
    return path


def handed_to_library(monkeypatch, verb: str, library_verb: str, arguments: list[str]):
    """The config `slm <verb> ...` hands `slmkit.<library_verb>` (the model is not opened)."""
    seen = []

    def record(*args, **kwargs):
        seen.append(args[-1])
        raise SystemExit(0)

    monkeypatch.setattr(slmkit, library_verb, record)
    module = STAGE_MODULES[verb]
    monkeypatch.setattr(f"slmkit.verbs.{module}.{OPENERS.get(module, 'open_runtime')}", lambda *args, **kwargs: None)
    result = CliRunner().invoke(app, [verb, *arguments])
    assert result.exit_code == 0 and seen, result.output
    return seen[0]


@pytest.mark.parametrize("verb, settings_class, stage_class, library_verb", VERBS)
def test_every_setting_is_offered_with_one_default(verb, settings_class, stage_class, library_verb):
    help_text = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "300"}).output
    for field, _ in settings(settings_class, "cli"):
        assert f"{field.metadata['flag'] or '--' + field.name.replace('_', '-')} " in help_text, field.name
    stage_fields = stage_class.model_fields
    for field, _ in settings(settings_class, "recipe"):  # bar a stage's declared own default (kept for old runs)
        assert stage_fields[field.name].default == stage_class.stage_defaults.get(field.name, field.default), field.name
    offered = {field.name for field, _ in settings(settings_class, "cli") + settings(settings_class, "recipe")}
    assert offered == {field.name for field in dataclasses.fields(settings_class)}


def test_the_commands_hand_the_library_their_settings(monkeypatch, data, tmp_path):
    config = handed_to_library(monkeypatch, "eval", "evaluate", ["m", "--data", str(data), "--stride", "8",
                                                                 "--batch-size", "2", "--weights", "int8"])
    # The task is inferred (and the file checked) before the model opens.
    assert config == EvalSettings(data=data, task="perplexity", stride=8, batch_size=2, weights="int8")
    config = handed_to_library(monkeypatch, "bench", "bench", ["m", "--compile", "--gen-tokens", "4"])
    assert config == BenchSettings(compile=True, gen_tokens=4) and config.n_ctx == 512 + 4 + 16
    out = tmp_path / "m.gguf"
    # No --quant: the checkpoint's GGUF plan decides, or f16 without one.
    assert handed_to_library(monkeypatch, "export", "export", ["m", "--out", str(out)]) == GGUFConfig(None)


@pytest.mark.parametrize("arguments, message", [
    (["eval", "m", "--data", "{data}", "--max-length", "1"], "--max-length must be at least 2, got 1"),
    (["eval", "m", "--data", "{data}", "--limit", "0"], "--limit must be positive, got 0"),
    (["eval", "m", "--data", "{data}", "--task", "poetry"], "unknown task 'poetry'; choose one of perplexity, "
                                                           "choice, lambada, classification"),
    (["bench", "m", "--repeats", "0"], "--prompt-tokens and --repeats must be positive and --gen-tokens not "
                                       "negative"),
    (["export", "m", "--format", "tflite", "--out", "x"], "unknown --format 'tflite'; choose one of gguf, onnx"),
    (["export", "m", "--quant", "q3", "--out", "x.gguf"], "unknown --quant 'q3'; choose one of f32, f16, bf16, "
                                                         "q8_0, q4_0, q4_1, q5_0"),
    (["export", "m", "--format", "onnx", "--quant", "q8_0", "--out", "x"], "--quant applies to --format gguf; an "
                                                                          "ONNX export keeps the float32 weights"),
])
def test_a_bad_setting_is_refused_before_the_model_opens(arguments, message, data, monkeypatch):
    opened = []
    for module in STAGE_MODULES.values():
        monkeypatch.setattr(f"slmkit.verbs.{module}.{OPENERS.get(module, 'open_runtime')}",
                            lambda *args, **kwargs: opened.append(args))
    result = CliRunner().invoke(app, [argument.format(data=data) for argument in arguments])
    assert isinstance(result.exception, slmkit.SlmError) and message in str(result.exception) and not opened


@pytest.mark.parametrize("stage, message", [
    ("eval\n    task: poetry", "stages[0] (eval): unknown task 'poetry'"),
    ("eval\n    batch_size: 0", "stages[0] (eval): --batch-size must be positive, got 0"),
    ("bench\n    repeats: 0", "stages[0] (bench): --prompt-tokens and --repeats must be positive"),
    ("export\n    quant: q3", "stages[0] (export): unknown --quant 'q3'"),
    ("export\n    format: onnx\n    quant: q8_0", "stages[0] (export): quant applies to format gguf; an ONNX export "
                                                 "keeps float32 weights (drop quant)"),
])
def test_a_recipe_is_checked_by_the_same_config(stage, message):
    with pytest.raises(slmkit.SlmError) as error:
        parse_recipe(f"name: x\nstages:\n  - stage: {stage}\n", "r.yaml")
    assert f"r.yaml: {message}" in str(error.value)


def test_recipe_stages_make_the_library_configs():
    recipe = parse_recipe("name: x\nstages:\n  - stage: export\n  - stage: export\n    format: onnx\n    name: o\n"
                          "  - stage: eval\n    max_length: 32\n    stride: 16\n  - stage: bench\n    compile: true\n",
                          "r.yaml")
    gguf, onnx, evaluation, bench = recipe.stages
    assert (gguf.config(), onnx.config()) == (GGUFConfig("f16"), OnnxConfig())  # a plan wins at run time
    assert evaluation.config() == EvalConfig(max_length=32, stride=16)
    assert bench.config() == BenchSettings(compile=True) and bench.config().weights == "float32"


def test_the_library_configs_stay_where_they_were():
    from slmkit import api

    for name in ("EvalConfig", "BenchConfig", "GGUFConfig", "OnnxConfig"):
        assert getattr(slmkit, name) is getattr(api, name)
    assert ExportSettings(format="onnx").export_config() == OnnxConfig()
    assert ExportSettings(quant="q8_0").export_config() == GGUFConfig("q8_0")
    # What slmkit.evaluate passes on: the evaluation's settings, not how the command opened the model.
    assert EvalSettings(data=Path("t.txt"), limit=3).options() == EvalConfig(limit=3).options()
    with pytest.raises(slmkit.SlmError, match="unknown --quant 'q2'"):
        GGUFConfig("q2")
