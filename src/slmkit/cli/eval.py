"""`slm eval MODEL --data PATH`: perplexity, multiple choice, LAMBADA, classification."""

from __future__ import annotations

import dataclasses

from slmkit.cli.common import ModelArg, load_model, print_json, print_table, progress_bar
from slmkit.cli.options import with_config
from slmkit.evaluate.config import EvalSettings
from slmkit.models.catalog import DEFAULT_MODEL


@with_config(EvalSettings, adds=("json",))
def eval_command(
    config: EvalSettings,
    model: ModelArg = DEFAULT_MODEL,
    *, json_output: bool,
) -> None:
    """Measure a model's quality on a data file.

    Examples:
      slm eval smollm2-135m-instruct --data wiki.test.txt --max-length 2048
      slm eval smollm2-135m-instruct --data arc_easy_test.jsonl --json
      slm eval ./my-classifier --data dev.tsv --task classification
      slm eval model.q4_0.gguf --data wiki.test.txt --max-length 2048   # scored by llama.cpp
      slm eval ./my-classifier-onnx --data dev.tsv   # run by onnxruntime (slm export --format onnx)
    """
    import slmkit
    from slmkit import data as data_module

    task = config.task or data_module.infer_task(config.data)  # check the file before the slow model load
    lm = load_model(model, **config.open_options(), **config.runtime_options(), n_ctx=config.max_length or 2048,
                    kind="classifier" if task == "classification" else None, logits_all=True)
    with progress_bar(f"{task} on {config.data.name}") as progress:
        result = slmkit.evaluate(lm, config.data, dataclasses.replace(config, task=task), progress=progress)
    result = {"model": model, **result}
    if json_output:
        print_json(result)
    else:
        print_table(f"{model} — {task}", result)
