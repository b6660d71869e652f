"""`slm generate [MODEL] PROMPT` and `slm chat [MODEL]`: streamed answers."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from slmkit.cli.common import (MODEL_HELP, AllowPickleOpt, BackendOpt, CompileOpt, DeviceOpt, DtypeOpt,
                               TrustRemoteCodeOpt, WeightsOpt, load_model)
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL

# Written out because the default is None (to tell "not given" apart); escaped, as Typer reads rich markup.
SHOWN_DEFAULT = f" \\[default: {DEFAULT_MODEL}]"
# The model comes first, as in every other verb; -m/--model is the older spelling, kept working.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Same as the model argument.")]

TemperatureOpt = Annotated[float, typer.Option(help="0 = greedy.")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling mass.")]
TopKOpt = Annotated[int, typer.Option(help="Keep the k most likely tokens; 0 = off.")]
MinPOpt = Annotated[float, typer.Option(help="Drop tokens below min-p x the top probability.")]
RepetitionOpt = Annotated[float, typer.Option(help=">1 discourages repeats.")]
SeedOpt = Annotated[int | None, typer.Option(help="Repeatable sampling.")]
MaxNewOpt = Annotated[int, typer.Option(help="Stop after this many tokens.")]
SystemOpt = Annotated[str | None, typer.Option(help="System message.")]


def generate_command(
    # Zero or more arguments before the prompt (Click fills the prompt from the end), so one argument is the
    # prompt and two are the model and the prompt; more than one model is refused below.
    model: Annotated[list[str] | None, typer.Argument(metavar="model", help=MODEL_HELP + "; a single "
                                                      "argument is the prompt instead." + SHOWN_DEFAULT)] = None,
    *,
    prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads it from stdin.")],
    model_option: ModelOpt = None,
    temperature: TemperatureOpt = 0.7, top_p: TopPOpt = 1.0, top_k: TopKOpt = 0, min_p: MinPOpt = 0.0,
    repetition_penalty: RepetitionOpt = 1.0, seed: SeedOpt = None, max_new_tokens: MaxNewOpt = 256,
    system: SystemOpt = None,
    no_chat_template: Annotated[bool, typer.Option(help="Feed the prompt as raw text.")] = False,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    weights: WeightsOpt = "float32",
    compile_decode: CompileOpt = False,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Answer one prompt, streaming tokens as they come.

    Examples:
      slm generate "What is the capital of France?"   # the default model answers
      slm generate ./my-model "Once upon a time" --no-chat-template --temperature 0
      slm generate model.q4_0.gguf - < prompt.txt     # the prompt from stdin
      slm generate "Write a haiku" --weights int8 --compile   # fastest on torch
    """
    from slmkit.runtime import SamplingConfig, generate

    if model and len(model) > 1:
        raise SlmError(f"slm generate takes [MODEL] PROMPT, got {len(model) + 1} arguments: "
                       "quote a prompt that has spaces")
    spec = one_model(model[0] if model else None, model_option)
    sampling = SamplingConfig(temperature, top_p, top_k, min_p, repetition_penalty, seed, max_new_tokens)
    if prompt == "-":
        prompt = sys.stdin.read()
    lm = load_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, backend=backend,
                    weights=weights, compile_decode=compile_decode, device=device, dtype=dtype)
    for piece in generate(lm, prompt, sampling, system=system, use_template=not no_chat_template):
        print(piece, end="", flush=True)
    print()


def chat_command(
    model: Annotated[str | None, typer.Argument(help=MODEL_HELP + "." + SHOWN_DEFAULT)] = None,
    model_option: ModelOpt = None,
    temperature: TemperatureOpt = 0.7, top_p: TopPOpt = 1.0, top_k: TopKOpt = 0, min_p: MinPOpt = 0.0,
    repetition_penalty: RepetitionOpt = 1.0, seed: SeedOpt = None, max_new_tokens: MaxNewOpt = 256,
    system: SystemOpt = None, backend: BackendOpt = "auto", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    weights: WeightsOpt = "float32",
    compile_decode: CompileOpt = False,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Chat in the terminal; /reset clears the history, /exit quits.

    Examples: slm chat; echo "Hi" | slm chat ./my-model --temperature 0; slm chat model.q4_0.gguf;
    slm chat --weights int8 --compile
    """
    from slmkit.runtime import SamplingConfig, repl

    spec = one_model(model, model_option)
    sampling = SamplingConfig(temperature, top_p, top_k, min_p, repetition_penalty, seed, max_new_tokens)
    lm = load_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, backend=backend,
                    weights=weights, compile_decode=compile_decode, device=device, dtype=dtype)
    repl(lm, sampling, system=system)


def one_model(argument: str | None, option: str | None) -> str:
    """The model named by the first argument or by -m/--model, never both; the default when neither."""
    if argument is not None and option is not None:
        raise SlmError(f"the model is given twice ({argument} and -m {option}): drop -m/--model, the first "
                       "argument names the model")
    given = argument if argument is not None else option
    return DEFAULT_MODEL if given is None else given
