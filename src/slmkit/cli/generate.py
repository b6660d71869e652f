"""`slm generate MODEL PROMPT` and `slm chat MODEL`: streamed answers."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from slmkit.cli.common import (DeviceOpt, DtypeOpt, AllowPickleOpt, BackendOpt, CompileOpt, ModelArg, TrustRemoteCodeOpt, WeightsOpt,
                               load_model)
from slmkit.models.catalog import DEFAULT_MODEL

TemperatureOpt = Annotated[float, typer.Option(help="0 = greedy.")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling mass.")]
TopKOpt = Annotated[int, typer.Option(help="Keep the k most likely tokens; 0 = off.")]
MinPOpt = Annotated[float, typer.Option(help="Drop tokens below min-p x the top probability.")]
RepetitionOpt = Annotated[float, typer.Option(help=">1 discourages repeats.")]
SeedOpt = Annotated[int | None, typer.Option(help="Repeatable sampling.")]
MaxNewOpt = Annotated[int, typer.Option(help="Stop after this many tokens.")]
SystemOpt = Annotated[str | None, typer.Option(help="System message.")]


def generate_command(
    prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads it from stdin.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Alias, directory, .gguf or hub id.")] = DEFAULT_MODEL,
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
      slm generate "What is the capital of France?"
      slm generate "Once upon a time" -m ./my-model --no-chat-template --temperature 0
      slm generate "Write a haiku about CPUs" --weights int8 --compile   # fastest on the torch backend
    """
    from slmkit.runtime import SamplingConfig, generate

    sampling = SamplingConfig(temperature, top_p, top_k, min_p, repetition_penalty, seed, max_new_tokens)
    if prompt == "-":
        prompt = sys.stdin.read()
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, backend=backend,
                    weights=weights, compile_decode=compile_decode, device=device, dtype=dtype)
    for piece in generate(lm, prompt, sampling, system=system, use_template=not no_chat_template):
        print(piece, end="", flush=True)
    print()


def chat_command(
    model: ModelArg = DEFAULT_MODEL,
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

    sampling = SamplingConfig(temperature, top_p, top_k, min_p, repetition_penalty, seed, max_new_tokens)
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, backend=backend,
                    weights=weights, compile_decode=compile_decode, device=device, dtype=dtype)
    repl(lm, sampling, system=system)
