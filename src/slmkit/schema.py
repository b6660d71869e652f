"""One declaration per setting: a config dataclass's field carries its help text and where it is offered, and
both the CLI's options (cli/options.py) and a recipe stage's schema (`stage_fields`) are made from it, so
a new setting is one edit and the two cannot drift apart. A training setting also names the argument of
transformers' TrainingArguments it fills (train.run walks them), so it reaches the Trainer with no other edit.

    lora_rank: int = setting("LoRA rank.", 8)
    grad_accum: int = setting("Steps accumulated per optimizer update.", 1, trainer="gradient_accumulation_steps")
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING


def setting(help: str, default=MISSING, *, flag: str | tuple[str, ...] | None = None, envvar: str | None = None,
            cli: bool = True, recipe: bool = True, trainer: str | tuple[str, ...] = ()):
    """A config field with its help text. `flag`: the CLI's name(s) when not --<field-name> (e.g. ("--calib",
    "--data"), or "--sym/--asym" for a bool with an off switch); `envvar`: read from this environment variable
    when the flag is not given (a secret kept off the command line); `cli` / `recipe`: False keeps it out of
    the command's options / the recipe stage (a run control the stage sets itself); `trainer`: the
    TrainingArguments field(s) its value fills as it is (batch_size: the train and eval batch sizes)."""
    metadata = {"help": help, "flag": flag, "envvar": envvar, "cli": cli, "recipe": recipe,
                "trainer": (trainer,) if isinstance(trainer, str) else tuple(trainer)}
    return dataclasses.field(default=default, metadata=metadata)


def settings(config_class: type, where: str) -> list[tuple[dataclasses.Field, typing.Any]]:
    """The (field, resolved type) of each setting `config_class` offers `where` ("cli" or "recipe"): the
    verb's own first, then those of the setting groups it inherits (slmkit.settings), nearest first."""
    hints = typing.get_type_hints(config_class)
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    ordered = []
    for owner in config_class.__mro__:
        for name in vars(owner).get("__annotations__", {}):
            if name in fields and fields[name] not in ordered:
                ordered.append(fields[name])
    return [(field, hints[field.name]) for field in ordered if "help" in field.metadata and field.metadata[where]]


def stage_fields(config_class: type, exclude: set[str] = frozenset(), *, written_out: bool = False,
                 own_defaults: dict | None = None) -> dict[str, tuple]:
    """pydantic `create_model` fields of a recipe stage that fills `config_class`. Each setting defaults to None,
    meaning the config's own default, or with `written_out` to the config's default itself (a run directory
    stores its recipe with every default written out, so a stage keeps the defaults it had, or no run made
    before would resume); `own_defaults`: the stage's own default of a setting."""
    from pydantic import Field

    own_defaults = own_defaults or {}
    fields = {}
    for field, kind in settings(config_class, "recipe"):
        if field.name in exclude:
            continue
        default = own_defaults.get(field.name, field.default if written_out else None)
        optional = kind if written_out and default is not None else kind | None
        fields[field.name] = (optional, Field(default, description=field.metadata["help"]))
    return fields
