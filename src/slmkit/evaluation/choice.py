"""Multiple choice (ARC, HellaSwag) scored as lm-evaluation-harness does.

acc: the choice with the highest summed log-likelihood after the context.
acc_norm: the same divided by the choice's length in characters.
"""

from __future__ import annotations

from collections.abc import Callable

from slmkit.data import ChoiceItem
from slmkit.evaluation.loglikelihood import loglikelihoods, require_causal
from slmkit.runtime import as_runtime


def choice_accuracy(lm, items: list[ChoiceItem], *, batch_size: int = 8,
                    progress: Callable[[int], None] | None = None) -> dict:
    lm = as_runtime(lm)
    require_causal(lm, "multiple choice")
    pairs = [(item.context, continuation) for item in items for continuation in item.continuations]
    scores = iter(loglikelihoods(lm, pairs, batch_size=batch_size, progress=progress))
    correct = correct_norm = 0
    for item in items:
        logprobs = [next(scores)[0] for _ in item.choices]
        normalized = [lp / max(len(choice), 1) for lp, choice in zip(logprobs, item.choices)]
        correct += max(range(len(logprobs)), key=logprobs.__getitem__) == item.gold
        correct_norm += max(range(len(normalized)), key=normalized.__getitem__) == item.gold
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "examples": len(items)}
