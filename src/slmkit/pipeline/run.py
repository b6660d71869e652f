"""`slm run`: a recipe's stages, in order, into one run directory, resumable.

    RUN/
      run.json        the recipe, every stage's result and every measurement
      run.log         one line per stage start/finish (and the error, if one stopped the run)
      01-quantize/    each stage's output, written atomically: a checkpoint with its
      02-export/      manifest, a GGUF with its Modelfile, or a measurement's results.json
      report.md, report.html

A stage counts as finished only once run.json says so, and run.json is
rewritten atomically after the stage's directory is in place. Started again
with the same command, a run skips finished stages and redoes the one it was
in when it stopped (Ctrl-C, kill -9, power loss) from scratch.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.models.checkpoint import atomic_directory
from slmkit.pipeline.recipe import Recipe, Stage

RUN_FILE = "run.json"
LOG_FILE = "run.log"
RUN_FORMAT_VERSION = 1
SAMPLE_TEXT = Path(__file__).resolve().parent.parent / "samples" / "small-models.txt"

# A progress factory: `with progress(description) as update: update(done, total)`.
ProgressFactory = Callable[[str], AbstractContextManager]


@dataclass
class RunModel:
    """A model the run holds: the original, or what a stage made."""

    label: str  # "original" or the stage's directory name
    spec: str  # what slmkit.load / load_model opens
    stage: str  # "original", "prune", "quantize", ...


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, content: bytes) -> None:
    """Write a file so a reader sees the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


class Run:
    """One run directory: its state (run.json) and its log."""

    def __init__(self, directory: Path, recipe: Recipe, model: str, data: str | None, recipe_path: str):
        self.directory = directory
        fresh = {"format": RUN_FORMAT_VERSION, "recipe_name": recipe.name, "recipe_path": recipe_path,
                 "fingerprint": recipe.fingerprint(), "model": model, "data": data,
                 "recipe": recipe.model_dump(mode="json"), "started": _now(), "stages": {}, "samples": None,
                 "finished": None}
        state_path = directory / RUN_FILE
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text())
            except json.JSONDecodeError:
                raise SlmError(f"{state_path} is not valid JSON; choose another --out") from None
            same = (_made_by(state), state.get("model"), state.get("data")) == (fresh["fingerprint"], model, data)
            if not same:
                raise SlmError(f"{directory} holds a run of another recipe, model or data "
                               f"({state.get('recipe_name')}, {state.get('model')}); choose another --out")
            self.state = {**state, "recipe": fresh["recipe"], "fingerprint": fresh["fingerprint"]}
        elif directory.exists() and any(directory.iterdir()):
            raise SlmError(f"{directory} is not empty and holds no {RUN_FILE}; choose another --out")
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self.state = fresh
            self.save()

    def save(self) -> None:
        write_json_atomic(self.directory / RUN_FILE, self.state)

    def log(self, message: str) -> None:
        with open(self.directory / LOG_FILE, "a") as log:
            log.write(f"{_now()} {message}\n")

    def finished(self, name: str) -> dict | None:
        record = self.state["stages"].get(name)
        return record if record and record.get("status") == "done" and (self.directory / name).exists() else None

    def remove_leftovers(self) -> None:
        """Temp directories of a stage that was killed while writing (atomic_directory's)."""
        for path in self.directory.iterdir():
            if path.name.startswith(".") and (".tmp-" in path.name or ".old-" in path.name):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def run_recipe(recipe: Recipe, *, recipe_path: str, model: str | None = None, data: str | None = None,
               out: Path | None = None, say: Callable[[str], None] = lambda message: None,
               progress: ProgressFactory | None = None) -> Path:
    """Execute (or resume) a recipe; returns the run directory. run.json then holds every result."""
    model = model or recipe.model or DEFAULT_MODEL
    data = data or recipe.data
    if data is not None and not Path(data).is_file():
        raise SlmError(f"--data {data}: no such file")
    directory = Path(out) if out else Path("runs") / recipe.name
    run = Run(directory, recipe, model, data, recipe_path)
    run.remove_leftovers()
    progress = progress or (lambda description: nullcontext(lambda done, total: None))
    models = [RunModel("original", model, "original")]
    for index, stage in enumerate(recipe.stages):
        name = recipe.stage_dir(index)
        record = run.finished(name)
        if record:
            say(f"{name}: finished earlier, kept")
        else:
            shutil.rmtree(directory / name, ignore_errors=True)  # what a stopped attempt left
            say(f"{name}: running")
            run.log(f"{name}: start")
            started = time.perf_counter()
            try:
                result, output = _execute(stage, directory / name, models, data, progress)
            except BaseException as exc:
                run.log(f"{name}: stopped ({type(exc).__name__}: {exc})")
                raise
            record = {"stage": stage.stage, "status": "done", "seconds": round(time.perf_counter() - started, 2),
                      "output": output, "result": result, "finished": _now()}
            run.state["stages"][name] = record
            run.save()
            run.log(f"{name}: done in {record['seconds']} s")
            say(f"{name}: done in {record['seconds']:.1f} s")
        if stage.makes_model:
            models.append(RunModel(name, str(directory / record["output"]), stage.stage))
    if run.state.get("samples") is None and recipe.prompts and len(models) > 1:
        say("answering the sample prompts with the original and the final model")
        run.state["samples"] = _answer_prompts(recipe, models[0], models[-1])
        run.save()
    run.state["finished"] = run.state.get("finished") or _now()
    run.save()
    run.log("run finished")
    return directory


def _execute(stage: Stage, out: Path, models: list[RunModel], data: str | None,
             progress: ProgressFactory) -> tuple[dict, str]:
    """Run one stage into `out`; returns (its result, its output path relative to the run directory)."""
    if not stage.makes_model:
        chosen = _chosen_models(stage, models)
        results = {}
        for model in chosen:
            with progress(f"{stage.stage}: {model.label}") as update:
                results[model.label] = (_evaluate(stage, model, data, update) if stage.stage == "eval"
                                        else _bench(stage, model))
        atomic_directory(out, lambda tmp: write_json_atomic(tmp / "results.json", results))
        return results, out.name
    from slmkit import load
    from slmkit.compress import calibration_ids, needs_calibration
    from slmkit.pipeline import stages

    source = models[-1]
    lm = load(source.spec)
    config = stage.config()
    if stage.stage == "export" and stage.format == "onnx":
        return stages.export_onnx_stage(lm, out), out.name
    if stage.stage == "export":
        path = out / f"model.{stage.quant}.gguf"
        result = {}

        def write(tmp: Path) -> None:
            result.update(stages.export_stage(lm, tmp / path.name, stage.quant))

        atomic_directory(out, write)
        result.update({"modelfile": str(out / f"{path.stem}.Modelfile"), "run_with": f"slm chat {path}"})
        return result, f"{out.name}/{path.name}"
    calibration = (calibration_ids(lm, data, samples=stage.calib_samples, seq_len=stage.calib_seq_len,
                                   seed=stage.seed) if needs_calibration(config) else None)
    calib = stages.calibration_record(data, stage.calib_samples, stage.calib_seq_len)
    common = {"parent": source.spec, "calib": calib, "seed": stage.seed}
    with progress(f"{stage.stage}, block") as update:
        if stage.stage == "prune":
            result = stages.prune_stage(lm, out, config, calibration, progress=update, **common)
        elif stage.stage == "structured":
            result = stages.structured_stage(lm, out, config, calibration, progress=update, **common)
        else:
            result = stages.quantize_stage(lm, out, config, calibration, fake_quant=stage.fake_quant,
                                           target=stage.target, progress=update, **common)
    return result, out.name


def _made_by(state: dict) -> str | None:
    """The fingerprint of the recipe a run directory holds, read with this slmkit's fields: a field added
    since then takes its default, so the run resumes; a value written out that a default no longer matches
    still tells the recipes apart."""
    from pydantic import ValidationError

    try:
        return Recipe.model_validate(state.get("recipe")).fingerprint()
    except ValidationError:  # a recipe this slmkit cannot read (or none stored): only the stored print
        return state.get("fingerprint")


def _chosen_models(stage, models: list[RunModel]) -> list[RunModel]:
    if stage.models == "all":
        return models
    if stage.models == "last":
        return models[-1:]
    by_label = {model.label: model for model in models}  # names were checked when the recipe was read
    return [by_label[label] for label in stage.models]


def _evaluate(stage, model: RunModel, data: str | None, update) -> dict:
    from slmkit.cli.common import load_model
    from slmkit.evaluate import evaluate

    path = stage.data or data or str(SAMPLE_TEXT)
    # "auto": a GGUF is scored by llama.cpp, the runtime it was made for.
    lm = load_model(model.spec, backend="auto", n_ctx=stage.max_length or 2048, logits_all=True,
                    weights=stage.weights if _on_torch(model) else "float32")
    result = evaluate(lm, path, task=stage.task, max_length=stage.max_length, limit=stage.limit, progress=update)
    return {**result, "backend": lm.backend, "weights": getattr(lm, "extra", {}).get("weights", "float32")}


def _bench(stage, model: RunModel) -> dict:
    """In a fresh process per model, so peak memory is that model's alone."""
    command = [sys.executable, "-m", "slmkit.cli.main", "bench", model.spec, "--json",
               "--prompt-tokens", str(stage.prompt_tokens), "--gen-tokens", str(stage.gen_tokens),
               "--repeats", str(stage.repeats)]
    if _on_torch(model):
        command += ["--weights", stage.weights] + (["--compile"] if stage.compile else [])
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise SlmError(f"bench of {model.label} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def _on_torch(model: RunModel) -> bool:
    """Whether the torch backend runs this model, so a stage's weights/compile apply (a GGUF or ONNX file
    runs on its own runtime with the weights it was written with)."""
    from slmkit.cli.common import choose_backend

    return choose_backend(model.spec, "auto") == "torch"


def _answer_prompts(recipe: Recipe, original: RunModel, final: RunModel) -> list[dict]:
    from slmkit.cli.common import load_model
    from slmkit.runtime.generate import SamplingConfig, generate

    sampling = SamplingConfig(temperature=0, max_new_tokens=recipe.max_new_tokens)
    answers = {}
    for model in (original, final):
        lm = load_model(model.spec, backend="auto")
        if lm.kind != "causal-lm":
            return []
        answers[model.label] = ["".join(generate(lm, prompt, sampling)).strip() for prompt in recipe.prompts]
    return [{"prompt": prompt, original.label: answers[original.label][i], final.label: answers[final.label][i],
             "final": final.label} for i, prompt in enumerate(recipe.prompts)]
