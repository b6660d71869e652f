"""`slm export MODEL --format gguf|onnx|web --out PATH`: a file local runtimes run, or a page a browser runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import ModelArg, human_bytes, print_json, print_table, progress_bar
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.verbs import export
from slmkit.verbs.export import ExportSettings


@with_config(ExportSettings, adds=("force", "json"))
def export_command(
    config: ExportSettings,
    model: ModelArg = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", help="FILE.gguf, or a directory (onnx, web).")] = ...,
    *, force: bool, json_output: bool,
) -> None:
    """Export a model for llama.cpp / Ollama / LM Studio (GGUF, with an Ollama Modelfile beside it),
    for onnxruntime (ONNX: encoders and sequence classifiers, float32), or as a web page that runs it in
    the visitor's browser (web: a decoder's GGUF on llama.cpp in WebAssembly, an encoder's ONNX on
    transformers.js; nothing leaves the page's origin, and a second visit runs offline).

    A checkpoint from `slm quantize --target gguf-q4_0` (or gguf-q8_0) exported with the matching
    --quant keeps its calibrated GPTQ/AWQ values exactly, and a checkpoint with a GGUF plan (`slm quantize
    --target gguf`) is written at each matrix's planned type without --quant; other weights are rounded at
    export time.
    An ONNX export is a directory (model.onnx, config.json, tokenizer) that `slm eval` and `slm bench` run.

    Examples:
      slm export --quant q8_0 --out smollm2.q8_0.gguf
      slm quantize --method gptq --target gguf-q4_0 --calib wiki.txt --out gptq-q4_0
      slm export gptq-q4_0 --quant q4_0 --out smollm2-gptq.q4_0.gguf
      slm quantize --target gguf --size 100MB --out planned   # a llama.cpp block type per matrix
      slm export planned --out smollm2-planned.gguf            # the plan's types, values kept exactly
      slm export ./my-classifier --format onnx --out my-classifier-onnx
      slm eval my-classifier-onnx --data dev.tsv   # run by onnxruntime
      slm export smollm2-planned.gguf --format web --out chat-web   # the .gguf as it is
      slm serve --static chat-web                                # open http://127.0.0.1:8000/
    In the page, `await slm.ready`, then `slm.chat(messages, {max_tokens, temperature, onToken})`,
    `slm.complete(prompt, options)`, `slm.classify(text)` or `slm.embed(text)`.
    """
    result = {"model": model, "out": str(out), **export.run(config, model, out, progress=progress_bar,
                                                             force=force).summary}
    if json_output:
        print_json(result)
        return
    print_table(f"{model} → {out.name}", {**result, **{key: human_bytes(result[key]) for key in
                                                      ("bytes", "model_bytes", "runtime_bytes") if key in result}})
    if result.get("calibrated_requantized_layers"):
        typer.echo(f"note: {result['calibrated_requantized_layers']} calibrated layers are not on the {config.quant} "
                   f"grid and were re-rounded; quantize with --target gguf-{config.quant} to keep them exactly",
                   err=True)
