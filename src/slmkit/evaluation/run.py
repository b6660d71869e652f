"""Run one evaluation task on a data file."""

from __future__ import annotations

from collections.abc import Callable

from slmkit import data
from slmkit.errors import SlmError
from slmkit.evaluation.choice import choice_accuracy
from slmkit.evaluation.classification import classification_accuracy
from slmkit.evaluation.config import EvalConfig
from slmkit.evaluation.divergence import divergence
from slmkit.evaluation.lambada import lambada_accuracy
from slmkit.evaluation.perplexity import perplexity


def evaluate(lm, data_path, *, task: str | None = None, max_length: int | None = None, stride: int | None = None,
             limit: int | None = None, batch_size: int | None = None, reference=None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Run one task on a data file; the task is inferred from the file when not given. With a `reference` model
    (perplexity only), also how far `lm`'s next-token distributions are from it (evaluation.divergence).

    Example: `evaluate(slmkit.load(), "wiki.txt", max_length=2048)["token_perplexity"]` (`slmkit.evaluate` takes
    the same settings as an EvalConfig).
    """
    EvalConfig(task, max_length, stride, limit, batch_size)  # its checks, before the file is read
    task = task or data.infer_task(data_path)
    if reference is not None and task != "perplexity":
        raise SlmError(f"--reference compares next-token distributions on a text; the {task} task has none: "
                       "give a .txt file (the perplexity task)")
    if reference is not None:
        metrics = divergence(lm, reference, data.load_text(data_path), max_length=max_length, stride=stride,
                             batch_size=batch_size or 1, limit=limit, progress=progress)
    elif task == "perplexity":
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
