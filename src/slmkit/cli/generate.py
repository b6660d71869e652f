"""`slm generate [MODEL] PROMPT` and `slm chat [MODEL]`: streamed answers."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import Annotated

import typer

from slmkit.cli.common import MODEL_HELP, load_model
from slmkit.cli.options import with_config
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.sampling import SamplingConfig
from slmkit.schema import setting
from slmkit.settings import CompileSettings, OpenSettings, RuntimeSettings

# Written out because the default is None (to tell "not given" apart); escaped, as Typer reads rich markup.
SHOWN_DEFAULT = f" \\[default: {DEFAULT_MODEL}]"
OptionalModelArg = Annotated[str | None, typer.Argument(help=MODEL_HELP + "." + SHOWN_DEFAULT)]
# The model comes first, as in every other verb; -m/--model is the older spelling, kept working.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Same as the model argument.")]


@dataclass(kw_only=True)
class ChatSettings(SamplingConfig, RuntimeSettings, CompileSettings, OpenSettings):
    """`slm chat`'s settings: the system message, how the model samples, and how it is opened."""

    system: str | None = setting("System message.", None)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**{each.name: getattr(self, each.name) for each in fields(SamplingConfig)})

    def load_options(self) -> dict:
        return {**self.runtime_options(), **self.open_options(), "compile_decode": self.compile}


@dataclass(kw_only=True)
class GenerateSettings(ChatSettings):
    """`slm generate`'s settings: chat's, and whether the prompt is templated."""

    no_chat_template: bool = setting("Feed the prompt as raw text.", False)


@with_config(GenerateSettings)
def generate_command(
    config: GenerateSettings,
    # Zero or more arguments before the prompt (Click fills the prompt from the end), so one argument is the
    # prompt and two are the model and the prompt; more than one model is refused below.
    model: Annotated[list[str] | None, typer.Argument(metavar="model", help=MODEL_HELP + "; a single "
                                                      "argument is the prompt instead." + SHOWN_DEFAULT)] = None,
    prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads it from stdin.")] = ...,
    model_option: ModelOpt = None,
) -> None:
    """Answer one prompt, streaming tokens as they come.

    Examples:
      slm generate "What is the capital of France?"   # the default model answers
      slm generate ./my-model "Once upon a time" --no-chat-template --temperature 0
      slm generate model.q4_0.gguf - < prompt.txt     # the prompt from stdin
      slm generate "Write a haiku" --weights int8 --compile   # fastest on torch
    """
    from slmkit.runtime import generate  # torch: kept out of CLI start-up

    if model and len(model) > 1:
        raise SlmError(f"slm generate takes [MODEL] PROMPT, got {len(model) + 1} arguments: "
                       "quote a prompt that has spaces")
    spec = one_model(model[0] if model else None, model_option)
    if prompt == "-":
        prompt = sys.stdin.read()
    lm = load_model(spec, **config.load_options())
    for piece in generate(lm, prompt, config.sampling(), system=config.system,
                          use_template=not config.no_chat_template):
        print(piece, end="", flush=True)
    print()


@with_config(ChatSettings)
def chat_command(config: ChatSettings, model: OptionalModelArg = None, model_option: ModelOpt = None) -> None:
    """Chat in the terminal; /reset clears the history, /exit quits.

    Examples: slm chat; echo "Hi" | slm chat ./my-model --temperature 0; slm chat model.q4_0.gguf;
    slm chat --weights int8 --compile
    """
    from slmkit.runtime import repl  # torch: kept out of CLI start-up

    lm = load_model(one_model(model, model_option), **config.load_options())
    repl(lm, config.sampling(), system=config.system)


def one_model(argument: str | None, option: str | None, *, flags: str = "-m/--model", what: str = "model") -> str:
    """The model (`what`) named by the first argument or by its option `flags`, never both; the default when
    neither."""
    if argument is not None and option is not None:
        raise SlmError(f"the {what} is given twice ({argument} and {flags.split('/')[0]} {option}): drop {flags}, "
                       f"the first argument names the {what}")
    given = argument if argument is not None else option
    return DEFAULT_MODEL if given is None else given
