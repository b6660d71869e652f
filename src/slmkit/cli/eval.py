"""`slm eval MODEL --data PATH`: perplexity, multiple choice, LAMBADA, classification."""

from __future__ import annotations

from slmkit.cli.common import ModelArg, print_result, progress_bar
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.verbs import evaluation
from slmkit.verbs.evaluation import EvalSettings


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
      slm eval model.q4_0.gguf --reference smollm2-135m-instruct --data wiki.test.txt   # KL to the original
      slm eval ./my-classifier-onnx --data dev.tsv   # run by onnxruntime (slm export --format onnx)
    """
    measured = evaluation.run(config, model, progress=progress_bar).summary
    print_result(f"{model} — {measured['task']}", {"model": model, **measured}, json_output)
