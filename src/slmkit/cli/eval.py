"""`slm eval MODEL --data PATH`: perplexity, multiple choice, LAMBADA, classification."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import (DeviceOpt, DtypeOpt, AllowPickleOpt, BackendOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt, WeightsOpt,
                               load_model, print_json, print_table, progress_bar)
from slmkit.models.catalog import DEFAULT_MODEL


def eval_command(
    model: ModelArg = DEFAULT_MODEL,
    data: Annotated[Path, typer.Option("--data", help=".txt, .jsonl (text/ARC/HellaSwag/LAMBADA) or .tsv/.csv")] = ...,
    task: Annotated[str | None, typer.Option(help="perplexity | choice | lambada | classification "
                                             "(default: inferred from the file)")] = None,
    max_length: Annotated[int | None, typer.Option(
        help="Perplexity window in tokens (default: min(context, 2048)).")] = None,
    stride: Annotated[int | None, typer.Option(
        help="Slide windows by this many tokens instead of not overlapping.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N windows (perplexity) or examples.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per forward pass.")] = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    weights: WeightsOpt = "float32",
    json_output: JsonOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Measure a model's quality on a data file.

    Examples:
      slm eval smollm2-135m-instruct --data wiki.test.txt --max-length 2048
      slm eval smollm2-135m-instruct --data arc_easy_test.jsonl --json
      slm eval ./my-classifier --data dev.tsv --task classification
      slm eval model.q4_0.gguf --data wiki.test.txt --max-length 2048   # scored by llama.cpp
      slm eval ./my-classifier-onnx --data dev.tsv   # run by onnxruntime (slm export --format onnx)
    """
    from slmkit import data as data_module
    from slmkit.evaluate import evaluate

    from slmkit.evaluate.perplexity import check_max_length

    task = task or data_module.infer_task(data)  # check the file and the options before the slow model load
    check_max_length(max_length)
    kind = "classifier" if task == "classification" else None
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, kind=kind,
                    backend=backend, n_ctx=max_length or 2048, logits_all=True, weights=weights, device=device,
                    dtype=dtype)
    with progress_bar(f"{task} on {data.name}") as progress:
        result = evaluate(lm, data, task=task, max_length=max_length, stride=stride, limit=limit,
                          batch_size=batch_size, progress=progress)
    result = {"model": model, **result}
    if json_output:
        print_json(result)
    else:
        print_table(f"{model} — {task}", result)
