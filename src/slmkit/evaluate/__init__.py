"""Measure a model: perplexity, multiple choice, LAMBADA, classification, speed."""

from __future__ import annotations

from collections.abc import Callable

from slmkit import data
from slmkit.errors import SlmError
from slmkit.evaluate.choice import choice_accuracy
from slmkit.evaluate.classification import classification_accuracy
from slmkit.evaluate.lambada import lambada_accuracy
from slmkit.evaluate.perplexity import perplexity

TASKS = ("perplexity", "choice", "lambada", "classification")


def evaluate(lm, data_path, *, task: str | None = None, max_length: int | None = None, stride: int | None = None,
             limit: int | None = None, batch_size: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Run one task on a data file; the task is inferred from the file when not given.

    Example: `slmkit.evaluate(slmkit.load(), "wiki.txt", max_length=2048)["token_perplexity"]`.
    """
    if task is not None and task not in TASKS:
        raise SlmError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise SlmError(f"--limit must be positive, got {limit}")
    if batch_size is not None and batch_size < 1:
        raise SlmError(f"--batch-size must be positive, got {batch_size}")
    task = task or data.infer_task(data_path)
    if task == "perplexity":
        metrics = perplexity(lm, data.load_text(data_path), max_length=max_length, stride=stride,
                             batch_size=batch_size or 1, limit=limit, progress=progress)
    else:
        loader, scorer = {
            "choice": (data.load_choice, choice_accuracy),
            "lambada": (data.load_lambada, lambada_accuracy),
            "classification": (data.load_labeled, classification_accuracy),
        }[task]
        examples = loader(data_path)[:limit]
        total = sum(len(e.choices) for e in examples) if task == "choice" else len(examples)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress:
                progress(done, total)

        metrics = scorer(lm, examples, progress=advance, **({"batch_size": batch_size} if batch_size else {}))
    return {"task": task, "data": str(data_path), **metrics}


__all__ = ["TASKS", "evaluate", "perplexity", "choice_accuracy", "lambada_accuracy", "classification_accuracy"]
