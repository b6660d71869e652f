"""The verb table: each verb's record, declared once in its module and walked by both front ends (the `slm`
commands and the recipe stages)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from slmkit.results import StageResult

# A progress factory: `with progress(description[, unit]) as update: update(done, total)`; the CLI draws bars
# (with the rate when a unit is named), a recipe run logs.
ProgressFactory = Callable[..., AbstractContextManager]


@dataclass
class Verb:
    """One verb, declared in its module as `VERB = register(Verb(...))`. The command `slm <name>` offers
    `settings`' fields as its options (the CLI finds its printing command by the verb's name); with `recipe`,
    `<name>` is a recipe stage too, made from this record (slmkit.pipeline.stages.<name> adds what a recipe alone
    needs).

    `run(settings, model, out, *, progress, force, data) -> StageResult` checks what can fail before the slow load,
    then does the work. `makes_model`: False for a verb that measures models (eval, bench) or makes data (synth).
    """

    name: str
    settings: type
    run: Callable[..., StageResult]
    makes_model: bool = True
    recipe: bool = True


VERBS: dict[str, Verb] = {}


def register(verb: Verb) -> Verb:
    VERBS[verb.name] = verb
    return verb
