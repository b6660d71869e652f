"""A command's options made from its config's fields (`slmkit.schema.setting`): the name, type, default and
help text are the field's, so the CLI cannot drift from the library. Typer reads a function's signature, so the
command gets one built from the fields; the config's own checks then give the one-line errors."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING
from typing import Annotated

import typer
from rich.markup import escape

from slmkit.cli.common import ForceOpt, JsonOpt, OutOpt
from slmkit.schema import settings

# Parameters many commands take, by the name `with_config(adds=...)` gives them: (parameter, annotation, default).
STANDARD = {"out": ("out", OutOpt, ...), "force": ("force", ForceOpt, False), "json": ("json_output", JsonOpt, False)}


def config_options(config_class: type) -> list[inspect.Parameter]:
    """A keyword parameter per setting the config offers the CLI: --field-name (a bool is a plain switch)."""
    parameters = []
    for field, kind in settings(config_class, "cli"):
        flags = field.metadata["flag"] or f"--{field.name.replace('_', '-')}"
        flags = (flags,) if isinstance(flags, str) else flags
        # Escaped: rich would read "[default: ...]" in a help text as markup and drop it.
        envvar = field.metadata["envvar"]
        option = typer.Option(*flags, help=escape(field.metadata["help"]), envvar=envvar, show_envvar=bool(envvar))
        default = ... if field.default is MISSING else field.default  # ...: Typer's "required"
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=Annotated[kind, option]))
    return parameters


def with_config(config_class: type, adds: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorates `command(config, model, ...)`: the command Typer sees takes the config's settings as options
    after its first parameter (the model) and calls it with the config they make. `adds`: standard parameters
    (STANDARD: "out", "force", "json") the command takes by name, declared here once for every command.

    Example: `@with_config(FinetuneConfig, adds=("out", "force", "json"))
    def finetune_command(config, model: ModelArg = DEFAULT_MODEL, *, out, force, json_output)`.
    """
    standard = {STANDARD[key][0]: inspect.Parameter(STANDARD[key][0], inspect.Parameter.KEYWORD_ONLY,
                                                    default=STANDARD[key][2], annotation=STANDARD[key][1])
                for key in adds}

    def decorate(command: Callable) -> Callable:
        own = [standard.get(parameter.name, parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
               for parameter in inspect.signature(command, eval_str=True).parameters.values()][1:]
        options = config_options(config_class)
        names = [parameter.name for parameter in options]

        def run(**values):
            return command(config_class(**{name: values.pop(name) for name in names}), **values)

        run.__name__, run.__doc__, run.__wrapped__ = command.__name__, command.__doc__, command
        run.config_class = config_class  # the parity test walks the commands by it
        run.__signature__ = inspect.Signature(own[:1] + options + own[1:])
        return run

    return decorate
