"""One schema per verb (slmkit.schema): the CLI's options and the recipe stage's fields are made from the config's
fields, so their names, defaults and help cannot drift apart, and a new setting is one edit."""

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

import slmkit
from slmkit.cli.distill import distill_command
from slmkit.cli.finetune import finetune_command
from slmkit.cli.main import app
from slmkit.cli.options import with_config
from slmkit.distillation import DistillConfig
from slmkit.finetuning import FinetuneConfig
from slmkit.pipeline.registry import Stage
from slmkit.pipeline.stages.distill import DistillStage
from slmkit.pipeline.registry import with_settings
from slmkit.pipeline.stages.finetune import FinetuneStage
from slmkit.schema import setting, settings

VERBS = [("finetune", FinetuneConfig, FinetuneStage, "finetune"), ("distill", DistillConfig, DistillStage, "distill")]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("small models run on small machines.\n")
    return str(path)


def captured_config(monkeypatch, verb: str, arguments: list[str]):
    """The config `slm <verb> ...` hands the library."""
    seen = []

    def record(*args, **kwargs):
        seen.append(args[-1])
        raise SystemExit(0)

    monkeypatch.setattr(slmkit, verb, record)
    result = CliRunner().invoke(app, [verb, *arguments])
    assert result.exit_code == 0 and seen, result.output
    return seen[0]


@pytest.mark.parametrize("verb, config_class, stage_class, stage", VERBS)
def test_cli_library_and_recipe_defaults_are_one(verb, config_class, stage_class, stage, data, tmp_path,
                                                 monkeypatch):
    teacher = ["--teacher", "t"] if verb == "distill" else []
    from_cli = captured_config(monkeypatch, verb, ["m", "--data", data, "--out", str(tmp_path / "o"), *teacher])
    from_recipe = stage_class(stage=stage).settings(data)
    assert from_cli == from_recipe == config_class(data=data)
    help_text = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "300"}).output
    recipe_fields = stage_class.model_json_schema()["properties"]
    for field, _ in settings(config_class, "cli"):
        assert f"--{field.name.replace('_', '-')} " in help_text, field.name
    for field, _ in settings(config_class, "recipe"):
        assert field.name in recipe_fields, field.name
    # What neither offers is said in the field itself (a run control, or not yet a recipe setting).
    offered = {field.name for field, _ in settings(config_class, "cli") + settings(config_class, "recipe")}
    assert offered == {field.name for field in dataclasses.fields(config_class)}


# Every verb with options (`slm run` takes a recipe, `slm models` none).
VERBS_WITH_OPTIONS = ("prune", "quantize", "student", "finetune", "distill", "synth", "export", "eval", "bench",
                      "serve", "generate", "chat", "info")


def test_every_verb_is_made_from_one_config():
    """Walks the registered commands and recipe stages: each option is a setting of the verb's config with its
    default, each setting is offered where its declaration says, and no stage re-declares one."""
    from slmkit.pipeline.registry import STAGES

    commands = typer.main.get_command(app).commands
    for verb in VERBS_WITH_OPTIONS:
        config_class = getattr(commands[verb].callback, "config_class", None)
        assert config_class is not None, f"slm {verb}: options not made from a config"
        options = {param.name: param for param in commands[verb].params}
        for field, _ in settings(config_class, "cli"):
            default = None if field.default is dataclasses.MISSING else field.default
            assert options[field.name].default == default, (verb, field.name)
        offered = {field.name for field, _ in settings(config_class, "cli") + settings(config_class, "recipe")}
        assert offered == {field.name for field in dataclasses.fields(config_class)}, verb
    by_config = {}
    for name, kind in STAGES.items():
        config_class = getattr(kind.schema, "config_class", None)
        assert config_class is not None, f"recipe stage {name}: fields not made from a config"
        by_config.setdefault(config_class, set()).update(kind.schema.model_fields)
        for field, _ in settings(config_class, "recipe"):
            declared = kind.schema.model_fields.get(field.name)
            own = kind.schema.stage_defaults.get(field.name, field.default)
            assert declared is None or declared.default in (None, own), (name, field.name)
    for config_class, fields in by_config.items():  # a setting left out of one stage is another's (structured)
        assert {field.name for field, _ in settings(config_class, "recipe")} <= fields, config_class.__name__


def test_every_option_reaches_the_config(data, tmp_path, monkeypatch):
    config = captured_config(monkeypatch, "finetune", [
        "m", "--data", data, "--out", str(tmp_path / "o"), "--lora", "--lora-rank", "4", "--eval-fraction", "0.1",
        "--task", "text", "--device", "cpu", "--weight-decay", "0.01"])
    assert config == FinetuneConfig(data=data, lora=True, lora_rank=4, eval_fraction=0.1, task="text", device="cpu",
                                    weight_decay=0.01)
    from slmkit.data.tasks import TASKS
    from slmkit.train.lifecycle import _arguments

    assert _arguments(config, TASKS["text"], 16, tmp_path / "c").weight_decay == 0.01  # it reaches the Trainer
    result = CliRunner().invoke(app, ["finetune", "m", "--data", data, "--out", str(tmp_path / "o"),
                                      "--lora-rank", "0"])
    assert str(result.exception) == "--lora-rank 0: must be at least 1"  # the config's own check
    result = CliRunner().invoke(app, ["finetune", "m", "--data", data, "--out", str(tmp_path / "o"),
                                      "--weight-decay", "1.5"])
    assert str(result.exception) == "--weight-decay 1.5: must be in [0, 1)" and not (tmp_path / "o").exists()


def test_a_new_setting_is_one_edit():
    @dataclasses.dataclass
    class Extended(FinetuneConfig):
        warmup_ratio: float = setting("Share of the steps the learning rate warms up over.", 0.03)

    extended_app = typer.Typer()
    extended_app.command("finetune")(with_config(Extended)(finetune_command.__wrapped__))
    extended_app.command("distill")(distill_command)  # two commands: Typer keeps the name as a subcommand
    help_text = CliRunner().invoke(extended_app, ["finetune", "--help"], env={"COLUMNS": "300"}).output
    assert "--warmup-ratio" in help_text and "Share of the steps the learning rate warms up over." in help_text

    class ExtendedStage(with_settings(Extended, Stage)):
        pass

    schema = ExtendedStage.model_json_schema()["properties"]["warmup_ratio"]
    assert schema["description"] == "Share of the steps the learning rate warms up over."
    assert ExtendedStage(warmup_ratio=0.1).warmup_ratio == 0.1


@pytest.mark.parametrize("stage", ["finetune", "distill"])
def test_a_recipe_training_stage_is_checked_when_it_is_read(stage):
    """Its settings are refused before any stage runs, although its data may not be written yet."""
    from slmkit.errors import SlmError
    from slmkit.pipeline.recipe import parse_recipe

    with pytest.raises(SlmError, match=rf"stages\[0\] \({stage}\): --lora-rank 0: must be at least 1"):
        parse_recipe(f"name: x\nstages:\n  - stage: {stage}\n    lora_rank: 0\n", "r.yaml")
    parse_recipe(f"name: x\nstages:\n  - stage: {stage}\n    data: later.jsonl\n", "r.yaml")  # written later: fine
