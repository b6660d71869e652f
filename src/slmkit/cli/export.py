"""`slm export MODEL --format gguf --quant q4_0 --out FILE.gguf`: a file local runtimes run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, ForceOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt, human_bytes,
                               load_model, print_json, print_table)
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL

FORMATS = ("gguf",)


def export_command(
    model: ModelArg = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", help="The file to write (FILE.gguf).")] = ...,
    format: Annotated[str, typer.Option("--format", help="gguf")] = "gguf",
    quant: Annotated[str, typer.Option(help="f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0")] = "f16",
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Export a model for llama.cpp / Ollama / LM Studio, with an Ollama Modelfile beside it.

    A checkpoint from `slm quantize --target gguf-q4_0` (or gguf-q8_0) exported with the matching
    --quant keeps its calibrated GPTQ/AWQ values exactly; other weights are rounded as llama.cpp does.

    Examples:
      slm export --quant q8_0 --out smollm2.q8_0.gguf
      slm quantize --method gptq --target gguf-q4_0 --calib wiki.txt --out gptq-q4_0
      slm export gptq-q4_0 --quant q4_0 --out smollm2-gptq.q4_0.gguf
    """
    from slmkit.export.gguf import check_target
    from slmkit.pipeline.stages import export_stage

    if format not in FORMATS:
        raise SlmError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    check_target(out, quant, force)  # before the (slow) load
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    result = {"model": model, "out": str(out), **export_stage(lm, out, quant, force=force)}
    if json_output:
        print_json(result)
        return
    print_table(f"{model} → {out.name}", {**result, "bytes": human_bytes(result["bytes"])})
    if result["calibrated_requantized_layers"]:
        typer.echo(f"note: {result['calibrated_requantized_layers']} calibrated layers are not on the {quant} grid and "
                   f"were re-rounded; quantize with --target gguf-{quant} to keep them exactly", err=True)
