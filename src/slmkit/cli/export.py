"""`slm export MODEL --format gguf|onnx --out PATH`: a file local runtimes run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, ForceOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt, human_bytes,
                               load_model, print_json, print_table)
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL

FORMATS = ("gguf", "onnx")


def export_command(
    model: ModelArg = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", help="What to write: FILE.gguf, or a directory for onnx.")] = ...,
    format: Annotated[str, typer.Option("--format", help="gguf (decoders) | onnx (encoders, classifiers)")] = "gguf",
    quant: Annotated[str | None, typer.Option(help="gguf only: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 "
                                              "(default f16)")] = None,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Export a model for llama.cpp / Ollama / LM Studio (GGUF, with an Ollama Modelfile beside it)
    or for onnxruntime (ONNX: encoders and sequence classifiers, float32).

    A checkpoint from `slm quantize --target gguf-q4_0` (or gguf-q8_0) exported with the matching
    --quant keeps its calibrated GPTQ/AWQ values exactly; other weights are rounded as llama.cpp does.
    An ONNX export is a directory (model.onnx, config.json, tokenizer) that `slm eval` and `slm bench` run.

    Examples:
      slm export --quant q8_0 --out smollm2.q8_0.gguf
      slm quantize --method gptq --target gguf-q4_0 --calib wiki.txt --out gptq-q4_0
      slm export gptq-q4_0 --quant q4_0 --out smollm2-gptq.q4_0.gguf
      slm export ./my-classifier --format onnx --out my-classifier-onnx
      slm eval my-classifier-onnx --data dev.tsv   # run by onnxruntime
    """
    import slmkit
    from slmkit.models.loading import local_path

    if format not in FORMATS:
        raise SlmError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    # Checks before the (slow) load.
    if format == "onnx":
        from slmkit.export.onnx import check_onnx_target

        if quant is not None:
            raise SlmError("--quant applies to --format gguf; an ONNX export keeps the float32 weights (drop --quant)")
        check_onnx_target(out, force, reads=[local_path(model)])
    else:
        from slmkit.export.gguf import check_target

        quant = quant or "f16"
        check_target(out, quant, force, reads=[local_path(model)])
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device="cpu",
                    dtype="float32")
    config = slmkit.OnnxConfig() if format == "onnx" else slmkit.GGUFConfig(quant=quant)
    written = slmkit.export(lm, out, config, force=force)
    result = {"model": model, "out": str(out), **written}
    if json_output:
        print_json(result)
        return
    print_table(f"{model} → {out.name}", {**result, "bytes": human_bytes(result["bytes"])})
    if result.get("calibrated_requantized_layers"):
        typer.echo(f"note: {result['calibrated_requantized_layers']} calibrated layers are not on the {quant} grid and "
                   f"were re-rounded; quantize with --target gguf-{quant} to keep them exactly", err=True)
