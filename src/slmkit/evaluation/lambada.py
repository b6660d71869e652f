"""LAMBADA: predict the last word of a passage (lm-evaluation-harness's lambada_openai).

acc: greedy decoding reproduces every token of the last word.
perplexity: exp of the mean negative log-likelihood of the last word.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from slmkit.evaluation.loglikelihood import loglikelihoods, require_causal
from slmkit.runtime import as_runtime


def lambada_accuracy(lm, pairs: list[tuple[str, str]], *, batch_size: int = 8,
                     progress: Callable[[int], None] | None = None) -> dict:
    lm = as_runtime(lm)
    require_causal(lm, "lambada")
    results = loglikelihoods(lm, pairs, batch_size=batch_size, progress=progress)
    return {
        "acc": sum(greedy for _, greedy in results) / len(results),
        "perplexity": math.exp(-sum(logprob for logprob, _ in results) / len(results)),
        "examples": len(results),
    }
