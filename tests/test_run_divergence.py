"""A recipe's eval stage compares every model but the original with the run's original (KL divergence, top-1
agreement, each on its own runtime), and the report puts that beside each model and each GGUF plan's prediction."""

from __future__ import annotations

import importlib.util
import json
import re
from contextlib import nullcontext

import pytest

from slmkit.models.checkpoint import read_manifest
from slmkit.pipeline.recipe import parse_recipe
from slmkit.pipeline.registry import RunModel, StageContext
from slmkit.pipeline.report import write_report
from slmkit.pipeline.run import run_recipe
from slmkit.pipeline.stages.eval import EvalStage, run_eval

from conftest import SAMPLE_TEXT

KL_KEYS = ("kl_mean", "kl_median", "kl_p99", "top1_agreement", "perplexity_ratio")


def measured(tmp_path, models: list[RunModel], data) -> dict:
    context = StageContext(tmp_path / "eval", models, None, lambda description, unit=None: nullcontext(
        lambda done, total: None))
    return run_eval(EvalStage(stage="eval", data=str(data), max_length=64), context).summary


def test_the_original_is_each_models_reference_on_a_text_and_on_no_other_task(tiny_llama_dir, tmp_path):
    original = RunModel("original", str(tiny_llama_dir), "original")
    copy = RunModel("copy", str(tiny_llama_dir), "prune")  # the original's own weights: no divergence at all
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT)
    results = measured(tmp_path / "text", [original, copy], text)
    assert not any(key in results["original"] for key in KL_KEYS)
    assert results["copy"]["kl_mean"] == results["copy"]["kl_p99"] == 0.0
    assert results["copy"]["top1_agreement"] == 1.0 and results["copy"]["perplexity_ratio"] == pytest.approx(1.0)

    choices = tmp_path / "arc.jsonl"
    choices.write_text('{"question": "2+2?", "choices": {"text": ["4", "5"], "label": ["A", "B"]}, "answerKey": "A"}\n')
    results = measured(tmp_path / "choice", [original, copy], choices)
    assert results["copy"]["task"] == "choice" and not any(key in results["copy"] for key in KL_KEYS)


def test_a_planned_gguf_is_measured_against_the_original_and_reported_beside_its_plan(tiny_llama_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT * 2)
    recipe = parse_recipe(f"""
name: planned
prompts: []
stages:
  - stage: quantize
    target: gguf
    max_kl: 0.01
    method: rtn
    calib_samples: 4
    calib_seq_len: 32
  - stage: export
  - stage: eval
    data: {text}
    max_length: 64
""", "planned.yaml")
    run_dir = run_recipe(recipe, recipe_path="planned.yaml", model=str(tiny_llama_dir), data=str(text),
                         out=tmp_path / "run")
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    results, plan = stages["03-eval"]["result"], stages["01-quantize"]["result"]
    assert not any(key in results["original"] for key in KL_KEYS)
    gguf_backend = "llamacpp" if importlib.util.find_spec("llama_cpp") else "torch"  # each on its own runtime
    assert results["02-export"]["backend"] == gguf_backend and results["01-quantize"]["backend"] == "torch"
    for label in ("01-quantize", "02-export"):  # rounded: close, not equal
        assert 0 < results[label]["kl_mean"] < 0.5 and 0.5 < results[label]["top1_agreement"] <= 1
    # The checkpoint's manifest keeps the plan's totals (its budget is in the config), as run.json does.
    manifest = read_manifest(run_dir / "01-quantize")
    assert {key: manifest["metrics"][key] for key in ("types", "file_bytes", "predicted_kl")} == {
        key: plan[key] for key in ("types", "file_bytes", "predicted_kl")}
    assert manifest["config"]["max_kl"] == 0.01 and sum(plan["types"].values()) == len(manifest["metrics"]["plan"])

    md_path, html_path = write_report([run_dir])
    markdown = md_path.read_text()
    assert "| model | stage | backend | on disk (MB) | perplexity | KL to original (nats) | top-1 agreement (%) |" \
        in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 02-export |"))
    assert f"| {results['02-export']['kl_mean']:.3g} | {100 * results['02-export']['top1_agreement']:.1f} |" in row
    original_row = next(line for line in markdown.splitlines() if line.startswith("| original |"))
    assert original_row.endswith("| — | — |")  # the reference itself: nothing to compare
    types = ", ".join(f"{count} {name}" for name, count in plan["types"].items())
    for label in ("01-quantize", "02-export"):  # each model measured, with the plan it came from
        made_by = "its plan" if label == "01-quantize" else "the plan of 01-quantize"
        line = (f"- {label}: {made_by} (max KL 0.01): {types}; GGUF file {plan['file_bytes'] / 1e6:.1f} MB; "
                f"predicted KL {plan['predicted_kl']:.3g}, measured KL {results[label]['kl_mean']:.3g} "
                f"(top-1 agreement {100 * results[label]['top1_agreement']:.1f}%)")
        assert line in markdown.splitlines()
    assert re.search(r"<ul id='plans'>\s*<li>01-quantize: its plan", html_path.read_text())
