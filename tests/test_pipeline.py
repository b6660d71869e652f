import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmkit.errors import SlmError
from slmkit.models.checkpoint import read_manifest
from slmkit.pipeline.recipe import load_recipe, parse_recipe
from slmkit.pipeline.run import run_recipe

from chromium import CHROMIUM
from conftest import run_slm

RECIPES = Path(__file__).parents[1] / "recipes"


def two_stage_recipe(text_path: Path, gptq_samples: int = 8, bench: bool = True) -> str:
    bench_stage = """
  - stage: bench
    prompt_tokens: 16
    gen_tokens: 4
    repeats: 1
""" if bench else ""
    return f"""
name: tiny
prompts: ["Small models"]
max_new_tokens: 8
stages:
  - stage: prune
    method: magnitude
    sparsity: 0.5
  - stage: quantize
    method: gptq
    bits: 4
    group_size: 16
    fake_quant: true
    calib_samples: {gptq_samples}
    calib_seq_len: 32
  - stage: eval
    data: {text_path}
    max_length: 64
""" + bench_stage


@pytest.fixture
def sample_text(tmp_path) -> Path:
    from conftest import SAMPLE_TEXT

    path = tmp_path / "sample.txt"
    path.write_text(SAMPLE_TEXT)
    return path


@pytest.mark.parametrize("text, message", [
    ("name: x\nstages:\n  - stage: compress\n", "r.yaml: stages[0].stage: unknown stage 'compress'"),
    ("name: x\nstages:\n  - stage: prune\n    sparsty: 0.5\n", "r.yaml: stages[0].sparsty: unknown field"),
    ("name: x\nstages:\n  - stage: prune\n    sparsity: 1.5\n", "r.yaml: stages[0] (prune): --sparsity"),
    ("name: x\nstages:\n  - stage: quantize\n    bits: 3\n", "r.yaml: stages[0] (quantize): --bits"),
    ("name: x\nstages:\n  - stage: quantize\n    bits: four\n", "r.yaml: stages[0].bits: "),
    ("name: x\nstagez: []\n", "r.yaml: stagez: unknown field"),
    ("name: x\nstages: [\n", "r.yaml: line 3 not valid YAML"),
    ("name: x\nstages:\n  - stage: eval\n    name: a\n  - stage: bench\n    name: a\n", "name 'a' is used twice"),
    ("name: x\nstages:\n  - stage: eval\n    models: [original, q]\n  - stage: quantize\n    name: q\n",
     "r.yaml: stages[0].models: 'q' is not the original or a model made before this stage"),
    ("name: x\nstages:\n  - stage: export\n    format: onnx\n    quant: q8_0\n",
     "r.yaml: stages[0] (export): quant applies to format gguf"),
    ("name: x\nstages:\n  - stage: export\n    format: onnx\n  - stage: prune\n    sparsity: 0.5\n",
     "r.yaml: stages[1] (prune): comes after an ONNX or ExecuTorch export"),
    ("name: x\nstages:\n  - stage: bench\n    weights: int4\n", "r.yaml: stages[0].weights: "),
])
def test_recipe_validation_errors_name_file_and_key(text, message):
    with pytest.raises(SlmError) as error:
        parse_recipe(text, "r.yaml")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_ready_recipes_validate():
    names = sorted(path.stem for path in RECIPES.glob("*.yaml"))
    assert {"edge-chat", "sparse-2of4", "int8-server", "classifier", "domain-chat", "distill-student",
            "edge-chat-qat"} <= set(names)
    for path in RECIPES.glob("*.yaml"):
        assert load_recipe(path).name == path.stem


def test_cli_run_refuses_a_bad_recipe_before_anything_runs(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: x\nstages:\n  - stage: prune\n    method: snip\n")
    result = run_slm("run", str(recipe), "--out", str(tmp_path / "run"))
    assert result.returncode != 0
    assert f"{recipe}: stages[0].method" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_two_stage_recipe_makes_checkpoints_run_json_and_report(tiny_llama_dir, sample_text, tmp_path):
    recipe = parse_recipe(two_stage_recipe(sample_text), "tiny.yaml")
    run_dir = run_recipe(recipe, recipe_path="tiny.yaml", model=str(tiny_llama_dir), out=tmp_path / "run")
    state = json.loads((run_dir / "run.json").read_text())
    assert [record["status"] for record in state["stages"].values()] == ["done"] * 4
    assert read_manifest(run_dir / "01-prune")["stage"] == "prune"
    manifest = read_manifest(run_dir / "02-quantize")
    assert manifest["stage"] == "quantize" and manifest["config"]["calib"] == "self-generated"
    measured = state["stages"]["03-eval"]["result"]
    assert set(measured) == {"original", "01-prune", "02-quantize"}
    assert measured["original"]["token_perplexity"] < measured["01-prune"]["token_perplexity"]
    benched = state["stages"]["04-bench"]["result"]
    assert all(result["decode_tokens_per_s"] > 0 for result in benched.values())
    assert len(state["samples"]) == 1 and state["samples"][0]["final"] == "02-quantize"

    from slmkit.pipeline.report import write_report

    md_path, html_path = write_report([run_dir])
    markdown = md_path.read_text()
    assert "| original |" in markdown and "02-quantize" in markdown and "perplexity" in markdown
    page = html_path.read_text()
    for element in ("id='summary'", "id='plot-pareto'", "id='plot-decode'", "id='plot-layers'", "id='samples'"):
        assert element in page
    assert "src='report-files" not in page  # self-contained: plots are embedded
    for command in ("slm chat", "slm serve"):  # every artefact: how to chat with it and how to serve it
        assert f"{command} {run_dir / '02-quantize'}" in markdown

    shutil.copytree(run_dir, tmp_path / "run-b")
    result = run_slm("report", str(run_dir), str(tmp_path / "run-b"), "--out", str(tmp_path / "both"))
    assert result.returncode == 0, result.stderr
    compared = (tmp_path / "both" / "report.md").read_text()
    assert "| run/original |" in compared and "| run-b/02-quantize |" in compared
    refused = run_slm("report", str(run_dir), str(tmp_path / "run-b"))
    assert refused.returncode != 0 and "--out" in refused.stderr


def _slm_run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slmkit.cli.main", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _wait_for_log(log: Path, line: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and line in log.read_text():
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    raise AssertionError(f"{line!r} never appeared in {log}")


def test_resume_after_kill_reruns_only_the_stopped_stage(tiny_llama_dir, sample_text, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    # Enough self-generated calibration that the GPTQ stage is still running when it is killed.
    recipe.write_text(two_stage_recipe(sample_text, gptq_samples=256, bench=False))
    model = str(tiny_llama_dir)
    killed_dir = tmp_path / "killed"
    process = _slm_run(str(recipe), "--model", model, "--out", str(killed_dir))
    _wait_for_log(killed_dir / "run.log", "02-quantize: start", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = json.loads((killed_dir / "run.json").read_text())
    assert list(state["stages"]) == ["01-prune"]
    first_stage = (killed_dir / "01-prune" / "model.safetensors").stat()

    resumed = subprocess.run([sys.executable, "-m", "slmkit.cli.main", "run", str(recipe), "--model", model,
                              "--out", str(killed_dir), "--json"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "01-prune: finished earlier, kept" in resumed.stderr
    assert (killed_dir / "01-prune" / "model.safetensors").stat().st_mtime_ns == first_stage.st_mtime_ns
    assert not [p for p in killed_dir.iterdir() if ".tmp-" in p.name]

    clean_dir = tmp_path / "clean"
    clean = subprocess.run([sys.executable, "-m", "slmkit.cli.main", "run", str(recipe), "--model", model,
                            "--out", str(clean_dir), "--json"], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    resumed_state = json.loads((killed_dir / "run.json").read_text())
    clean_state = json.loads((clean_dir / "run.json").read_text())
    for name in ("02-quantize", "03-eval"):
        resumed_result, clean_result = resumed_state["stages"][name]["result"], clean_state["stages"][name]["result"]
        assert json.dumps(resumed_result, sort_keys=True) == json.dumps(clean_result, sort_keys=True)
    assert resumed_state["samples"] == clean_state["samples"]
    assert (killed_dir / "report.html").is_file() and (killed_dir / "report.md").is_file()


def test_run_refuses_a_directory_of_another_recipe(tiny_llama_dir, sample_text, tmp_path):
    recipe = parse_recipe(two_stage_recipe(sample_text).replace("sparsity: 0.5", "sparsity: 0.25"), "a.yaml")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"fingerprint": "other", "model": "m", "data": None,
                                                          "recipe_name": "other"}))
    with pytest.raises(SlmError, match="holds a run of another recipe"):
        run_recipe(recipe, recipe_path="a.yaml", model=str(tiny_llama_dir), out=tmp_path / "run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SlmError, match="is not empty"):
        run_recipe(recipe, recipe_path="a.yaml", model=str(tiny_llama_dir), out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_run_resumes_under_a_newer_slmkit_and_still_refuses_a_changed_value(tiny_llama_dir, sample_text,
                                                                                tmp_path):
    text = f"name: t\nprompts: []\nstages:\n  - stage: eval\n    data: {sample_text}\n    max_length: 32\n"
    recipe = parse_recipe(text, "t.yaml")
    run_dir = run_recipe(recipe, recipe_path="t.yaml", model=str(tiny_llama_dir), out=tmp_path / "run")
    state_path = run_dir / "run.json"
    state = json.loads(state_path.read_text())
    finished = state["stages"]["01-eval"]["finished"]
    # As an older slmkit wrote it: without the fields added since, and so with another fingerprint.
    del state["recipe"]["stages"][0]["weights"]
    state["fingerprint"] = "0123456789abcdef"
    state_path.write_text(json.dumps(state))
    run_recipe(recipe, recipe_path="t.yaml", model=str(tiny_llama_dir), out=run_dir)
    resumed = json.loads(state_path.read_text())
    assert resumed["stages"]["01-eval"]["finished"] == finished  # kept, not measured again
    assert resumed["fingerprint"] == recipe.fingerprint()
    # A value the run wrote out that the recipe no longer has (e.g. a default that changed) is another recipe.
    resumed["recipe"]["stages"][0]["limit"] = 5
    state_path.write_text(json.dumps(resumed))
    with pytest.raises(SlmError, match="holds a run of another recipe"):
        run_recipe(recipe, recipe_path="t.yaml", model=str(tiny_llama_dir), out=run_dir)


def test_a_model_measured_on_other_weights_gets_a_row_of_its_own(tmp_path):
    from slmkit.pipeline.report import collect_rows, headline

    def bench(speed, dtype, compiled=False):
        return {"backend": "torch", "dtype": dtype, "compiled": compiled, "decode_tokens_per_s": speed,
                "bytes_on_disk": 100}

    done = {"status": "done", "seconds": 1.0}
    state = {"model": "m", "stages": {
        "q": {**done, "stage": "quantize", "output": "q", "result": {}},
        "eval": {**done, "stage": "eval", "result": {
            "original": {"backend": "torch", "weights": "float32", "token_perplexity": 10.0},
            "q": {"backend": "torch", "weights": "float32", "token_perplexity": 11.0}}},
        "bench": {**done, "stage": "bench",
                  "result": {"original": bench(20.0, "float32"), "q": bench(19.0, "float32")}},
        "eval-int8": {**done, "stage": "eval", "result": {
            "q": {"backend": "torch", "weights": "int8", "token_perplexity": 11.1}}},
        "bench-int8": {**done, "stage": "bench", "result": {"q": bench(45.0, "int8", compiled=True)}},
    }}
    rows = collect_rows(tmp_path, state, "")
    # Compiling changes only the speed: the int8 eval and the compiled int8 bench share a row.
    assert [(row.label, row.backend) for row in rows] == [
        ("original", "torch"), ("q", "torch"), ("q (torch int8)", "torch int8 compiled")]
    by_label = {row.label: row.values for row in rows}
    assert by_label["q"]["decode_tokens_per_s"] == 19.0 and by_label["q"]["token_perplexity"] == 11.0
    assert by_label["q (torch int8)"]["token_perplexity"] == 11.1
    assert by_label["q (torch int8)"]["decode_tokens_per_s"] == 45.0
    assert by_label["q (torch int8)"]["bytes_on_disk"] == 100
    assert headline(rows)["final"] == "q (torch int8)"


def test_report_escapes_prompts_and_answers_in_html_and_keeps_markdown_rows(tmp_path):
    from slmkit.pipeline.report import write_report

    done = {"status": "done", "seconds": 1.0}
    measured = {"backend": "torch", "weights": "float32", "token_perplexity": 10.0}
    state = {"recipe_name": "tiny", "model": "m", "data": None, "finished": "now",
             "stages": {"eval": {**done, "stage": "eval", "result": {"original": measured}}},
             "samples": [{"final": "original", "prompt": "Say <script>alert('x')</script>",
                          "original": "a <b>bold</b> & answer"}]}
    (tmp_path / "run.json").write_text(json.dumps(state))
    md_path, html_path = write_report([tmp_path])
    page = html_path.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt; &amp; answer" in page
    lines = md_path.read_text().splitlines()
    assert "| model | stage | backend | perplexity |" in lines and "|---|---|---|---|" in lines
    assert "| original | original | torch | 10.000 |" in lines
    assert "## Sample answers" in lines and "- eval (eval): 1.0 s" in lines


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")
def test_html_report_opens_in_headless_chromium(tiny_llama_dir, sample_text, tmp_path):
    recipe = parse_recipe(two_stage_recipe(sample_text), "tiny.yaml")
    run_dir = run_recipe(recipe, recipe_path="tiny.yaml", model=str(tiny_llama_dir), out=tmp_path / "run")
    from slmkit.pipeline.report import write_report

    _, html_path = write_report([run_dir])
    # Chromium prints the DOM after the page has loaded and reports console messages on stderr.
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'id="summary"' in dom and "<td>original</td>" in dom
    for plot in ("pareto", "decode", "layers"):
        assert f'id="plot-{plot}"' in dom
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []


def test_bench_stage_reports_each_models_own_peak_memory(tiny_llama_dir):
    """A bench process started by a big process must not report the parent's peak (Linux keeps ru_maxrss)."""
    from slmkit.evaluation.bench import bench_in_fresh_process

    ballast = bytearray(1_500_000_000)  # noqa: F841  (held while the child runs)
    result = bench_in_fresh_process(str(tiny_llama_dir), prompt_tokens=8, gen_tokens=2, repeats=1)
    assert result["peak_rss_bytes"] < 1_200_000_000 and result["decode_tokens_per_s"] > 0


def test_measuring_stages_run_torch_models_with_their_weights_and_a_gguf_as_written(tiny_llama_dir, sample_text,
                                                                                   tmp_path):
    from slmkit.pipeline.report import collect_rows

    recipe = parse_recipe(f"""
name: int8
prompts: []
stages:
  - stage: quantize
    name: gptq-w8
    method: gptq
    bits: 8
    group_size: 0
    calib_samples: 4
    calib_seq_len: 32
  - stage: export
    name: gguf
    quant: q8_0
  - stage: eval
    data: {sample_text}
    max_length: 64
    weights: int8
  - stage: bench
    prompt_tokens: 16
    gen_tokens: 4
    repeats: 1
    weights: int8
""", "int8.yaml")
    run_dir = run_recipe(recipe, recipe_path="int8.yaml", model=str(tiny_llama_dir), out=tmp_path / "run")
    state = json.loads((run_dir / "run.json").read_text())
    benched, evaluated = state["stages"]["04-bench"]["result"], state["stages"]["03-eval"]["result"]
    gguf_backend = "llamacpp" if importlib.util.find_spec("llama_cpp") else "torch"
    for label in ("original", "gptq-w8"):
        assert benched[label]["dtype"] == "int8" and evaluated[label]["weights"] == "int8"
    # The GPTQ checkpoint's int8 codes are what runs: every quantized layer (the LM head is not one).
    assert benched["gptq-w8"]["int8_checkpoint_layers"] == 14 and benched["original"]["int8_checkpoint_layers"] == 0
    if gguf_backend == "llamacpp":
        assert benched["gguf"]["dtype"] == "q8_0" and benched["gguf"]["backend"] == "llamacpp"
    backends = {row.label: row.backend for row in collect_rows(run_dir, state, "int8")}
    assert backends == {"original": "torch int8", "gptq-w8": "torch int8",
                        "gguf": gguf_backend if gguf_backend == "llamacpp" else "torch int8"}


def test_onnx_export_stage_writes_a_directory_that_bench_runs(tiny_tokenizer, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from conftest import tiny_model

    from slmkit import save

    encoder = save(tiny_model("bert"), tmp_path / "bert", tiny_tokenizer, stage="test")
    recipe = parse_recipe("""
name: onnx
stages:
  - stage: export
    name: onnx
    format: onnx
  - stage: bench
    prompt_tokens: 16
    repeats: 1
""", "onnx.yaml")
    run_dir = run_recipe(recipe, recipe_path="onnx.yaml", model=str(encoder), out=tmp_path / "run")
    state = json.loads((run_dir / "run.json").read_text())
    exported = state["stages"]["onnx"]
    assert exported["output"] == "onnx" and (run_dir / "onnx" / "model.onnx").is_file()
    assert exported["result"]["kind"] == "encoder"
    benched = state["stages"]["02-bench"]["result"]
    assert benched["onnx"]["backend"] == "onnx" and benched["original"]["backend"] == "torch"
    assert benched["onnx"]["prefill_tokens_per_s"] > 0


def test_a_stage_registered_in_its_own_module_runs_through_slm_run(tiny_llama_dir, sample_text, tmp_path):
    """The executor and the recipe schema come from the registry: a new stage is one register_stage call."""
    from typing import Literal

    import torch
    from typer.testing import CliRunner

    import slmkit
    from slmkit.cli.main import app
    from slmkit.pipeline.registry import STAGES, Stage, register_stage
    from slmkit.verbs import StageResult

    class ScaleHeadStage(Stage):
        stage: Literal["scale-head"]
        factor: float = 2.0

    def scale_head(stage: ScaleHeadStage, context) -> StageResult:  # checkpoint -> checkpoint + metrics
        lm = slmkit.load(context.source)
        with torch.no_grad():
            lm.model.lm_head.weight.mul_(stage.factor)
        slmkit.save(lm, context.out, stage="scale-head", config={"factor": stage.factor})
        return StageResult({"factor": stage.factor, "source": context.source}, context.out)

    register_stage(ScaleHeadStage, scale_head)
    try:
        recipe = tmp_path / "toy.yaml"
        recipe.write_text(f"name: toy\nmodel: {tiny_llama_dir}\ndata: {sample_text}\nprompts: []\nstages:\n"
                          "  - stage: scale-head\n    factor: 0.5\n  - stage: eval\n    max_length: 64\n")
        result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run"), "--json"])
        assert result.exit_code == 0, result.output
        state = json.loads((tmp_path / "run" / "run.json").read_text())
        assert state["stages"]["01-scale-head"]["result"] == {"factor": 0.5, "source": str(tiny_llama_dir)}
        original, scaled = slmkit.load(str(tiny_llama_dir)), slmkit.load(str(tmp_path / "run" / "01-scale-head"))
        assert torch.equal(scaled.model.lm_head.weight, original.model.lm_head.weight * 0.5)
        perplexities = {label: measured["token_perplexity"]
                        for label, measured in state["stages"]["02-eval"]["result"].items()}
        assert set(perplexities) == {"original", "01-scale-head"}
        assert perplexities["original"] != perplexities["01-scale-head"]  # the eval ran on the new checkpoint
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: x\nstages:\n  - stage: scale-head\n    factor: lots\n")
        refused = CliRunner().invoke(app, ["run", str(bad)])
        assert refused.exit_code != 0 and "stages[0].factor" in str(refused.exception)
    finally:
        STAGES.pop("scale-head")


def test_classifier_recipe_fine_tunes_exports_onnx_and_scores_the_held_back_rows(tiny_tokenizer, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from conftest import tiny_model

    from slmkit import save

    encoder = save(tiny_model("bert"), tmp_path / "bert", tiny_tokenizer, stage="test")
    rows = ["small models run on a phone\tpositive"] * 30 + ["large models need a data centre\tnegative"] * 30
    data = tmp_path / "train.tsv"
    data.write_text("\n".join(rows) + "\n")
    recipe = load_recipe(RECIPES / "classifier.yaml").model_copy()
    recipe.stages[0].epochs, recipe.stages[0].lr = 4, 3e-3  # a tiny model learns the toy set quickly
    recipe.stages[-1].prompt_tokens, recipe.stages[-1].repeats = 16, 1
    run_dir = run_recipe(recipe, recipe_path="classifier.yaml", model=str(encoder), data=str(data),
                         out=tmp_path / "run")
    state = json.loads((run_dir / "run.json").read_text())
    tuned = state["stages"]["finetuned"]["result"]
    assert tuned["heldout"] == "finetuned/heldout.csv" and tuned["loss_curve"]["train"]
    held_back = (run_dir / "finetuned" / "heldout.csv").read_text().splitlines()
    assert held_back[0] == "text,label" and len(held_back) == 1 + 3  # 5 % of 60 rows
    scored = state["stages"]["03-eval"]["result"]
    assert scored["finetuned"]["data"].endswith("finetuned/heldout.csv")
    assert scored["finetuned"]["accuracy"] == scored["onnx"]["accuracy"] == 1.0
    from slmkit.pipeline.report import write_report

    markdown, _ = write_report([run_dir])
    assert (run_dir / "report-files" / "loss.png").is_file()
    assert "| finetuned | finetune |" in markdown.read_text()


def test_run_directories_made_before_the_stages_took_their_configs_still_resume():
    """run.json stores the recipe with every default written out (the file holds what slmkit 0.1, commit
    a5ecc26, stored for each built-in recipe and every stage kind): read with today's stages, each must
    fingerprint as the same recipe given afresh, or `slm run` would refuse to resume the directory."""
    from slmkit.pipeline.recipe import validate_recipe

    stored = json.loads((Path(__file__).parent / "recipes_stored_by_0_1.json").read_text())
    for entry in stored:
        assert validate_recipe(entry["stored"]).fingerprint() == validate_recipe(entry["recipe"]).fingerprint()
