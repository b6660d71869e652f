"""A recipe stage runs its verb's `run` (the record in slmkit.verbs.VERBS) and keeps only what a recipe needs:
which models, which data, the stage directory and its run.json record. The verbs' runs are replaced here: no model
is opened."""

import json
from contextlib import nullcontext
from pathlib import Path

import pytest

from slmkit.errors import SlmError
from slmkit.pipeline.recipe import parse_recipe
from slmkit.pipeline.registry import STAGES, RunModel, StageContext
from slmkit.results import FinetuneResult, StageResult
from slmkit.verbs import VERBS

MODELS = [RunModel("original", "teacher-spec", "original"), RunModel("01-prune", "pruned-spec", "prune")]


def no_progress(description, unit=None):
    return nullcontext(lambda *progress: None)


def stage_of(yaml: str):
    (stage,) = parse_recipe(f"name: x\nstages:\n  - {yaml}\n", "r.yaml").stages
    return stage


def run_stage(stage, out: Path, data: str | None = None, earlier: list | None = None):
    return STAGES[stage.stage].run(stage, StageContext(out, list(MODELS), data, no_progress, earlier or []))


@pytest.fixture
def calls(monkeypatch):
    """What each replaced verb run was given: (verb, settings, model, out, the other keywords)."""
    seen = []

    def replaced(verb: str, result: StageResult):
        def run(settings, model, out=None, *, progress, **options):
            seen.append((verb, settings, model, out, options))
            with progress("working") as update:
                update(1, 1, {}) if verb in ("finetune", "distill") else update(1, 1)
            return result
        return run

    monkeypatch.setattr(VERBS["eval"], "run", replaced("eval", StageResult({"task": "perplexity"}, None,
                                                                          {"backend": "torch"})))
    monkeypatch.setattr(VERBS["bench"], "run", replaced("bench", StageResult({"decode_tokens_per_s": 9.0}, None)))
    trained = FinetuneResult({"eval_loss": 0.5}, Path("out"), {"heldout": None}, task="text", completed=True, step=4,
                             curve={"train": [1.0]})
    for verb in ("finetune", "distill"):
        monkeypatch.setattr(VERBS[verb], "run", replaced(verb, trained))
    return seen


def test_the_measuring_stages_run_the_verb_once_per_chosen_model(calls, tmp_path):
    (tmp_path / "t.txt").write_text("text\n")
    evaluated = run_stage(stage_of(f"stage: eval\n    data: {tmp_path / 't.txt'}\n    limit: 3"), tmp_path / "02-eval")
    assert evaluated.summary == {label: {"task": "perplexity", "backend": "torch", "weights": "float32"}
                                for label in ("original", "01-prune")}
    assert json.loads((tmp_path / "02-eval" / "results.json").read_text()) == evaluated.summary
    # On a text every model but the original is compared with the original.
    assert [(call[1].data, call[1].limit, call[2], call[1].reference) for call in calls] == [
        (str(tmp_path / "t.txt"), 3, "teacher-spec", None), (str(tmp_path / "t.txt"), 3, "pruned-spec", "teacher-spec")]
    calls.clear()
    benched = run_stage(stage_of("stage: bench\n    models: last\n    weights: int8"), tmp_path / "03-bench")
    assert benched.summary == {"01-prune": {"decode_tokens_per_s": 9.0}}
    # Each model in a process of its own (its peak memory alone); torch runs this one, so int8 applies.
    (verb, settings, model, _, options), = calls
    assert (model, settings.weights, options) == ("pruned-spec", "int8", {"fresh_process": True})


def test_a_training_stage_records_the_verbs_result_and_refuses_a_stopped_run(calls, monkeypatch, tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("text\n")
    trained = run_stage(stage_of("stage: distill\n    max_steps: 4"), tmp_path / "02-distill", str(data))
    assert trained.summary == {"data": str(data), "eval_loss": 0.5, "loss_curve": {"train": [1.0]},
                              "heldout": None, "teacher": "teacher-spec"}
    (verb, settings, model, out, options), = calls
    assert (verb, settings.max_steps, settings.resume, model, out, options) == (
        "distill", 4, False, "pruned-spec", tmp_path / "02-distill", {"teacher": "teacher-spec"})
    stopped = FinetuneResult({}, Path("out"), {"heldout": None}, task="text", completed=False, step=7)
    monkeypatch.setattr(VERBS["finetune"], "run", lambda *args, **kwargs: stopped)
    with pytest.raises(SlmError, match=r"^finetune stopped at step 7 \(SIGTERM\); `slm run` again resumes it$"):
        run_stage(stage_of("stage: finetune"), tmp_path / "03-finetune", str(data))
