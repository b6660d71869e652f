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
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.models.checkpoint import check_writable, claimed
from slmkit.pipeline.recipe import Recipe, validate_recipe
from slmkit.pipeline.registry import STAGES, ProgressFactory, RunModel, StageContext, write_json_atomic
from slmkit.sampling import SamplingConfig

RUN_FILE = "run.json"
LOG_FILE = "run.log"
RUN_FORMAT_VERSION = 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
            check_writable(directory)
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
    with claimed(directory):  # a second `slm run` into this directory would redo its stages alongside
        run = Run(directory, recipe, model, data, recipe_path)
        run.remove_leftovers()
        progress = progress or (lambda description, unit=None: nullcontext(lambda done, total: None))
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
                    earlier = [run.state["stages"][recipe.stage_dir(i)] for i in range(index)]
                    done = STAGES[stage.stage].run(stage, StageContext(directory / name, list(models), data, progress,
                                                                       earlier))
                except BaseException as exc:
                    run.log(f"{name}: stopped ({type(exc).__name__}: {exc})")
                    raise
                record = {"stage": stage.stage, "status": "done", "seconds": round(time.perf_counter() - started, 2),
                          "output": str(done.out.relative_to(directory)), "result": done.summary, "finished": _now()}
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


def _made_by(state: dict) -> str | None:
    """The fingerprint of the recipe a run directory holds, read with this slmkit's fields: a field added
    since then takes its default, so the run resumes; a value written out that a default no longer matches
    still tells the recipes apart."""
    from pydantic import ValidationError

    try:
        return validate_recipe(state.get("recipe")).fingerprint()
    except ValidationError:  # a recipe this slmkit cannot read (or none stored): only the stored print
        return state.get("fingerprint")


def _answer_prompts(recipe: Recipe, original: RunModel, final: RunModel) -> list[dict]:
    from slmkit.runtime import generate, open_model  # torch: kept out of CLI start-up

    sampling = SamplingConfig(temperature=0, max_new_tokens=recipe.max_new_tokens)
    answers = {}
    for model in (original, final):
        lm = open_model(model.spec)
        if lm.kind != "causal-lm":
            return []
        answers[model.label] = ["".join(generate(lm, prompt, sampling)).strip() for prompt in recipe.prompts]
    return [{"prompt": prompt, original.label: answers[original.label][i], final.label: answers[final.label][i],
             "final": final.label} for i, prompt in enumerate(recipe.prompts)]
