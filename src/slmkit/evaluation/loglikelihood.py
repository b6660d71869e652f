"""Log-likelihood of a continuation after a context, as lm-evaluation-harness computes it.

Matching its tokenisation matters more than anything else for agreeing with
published numbers: trailing spaces of the context move to the continuation,
the pair is encoded whole, and the continuation tokens are whatever the whole
encoding has past the context's own tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from slmkit.errors import SlmError
from slmkit.runtime import as_runtime
from slmkit.runtime.interface import right_padded


def require_causal(lm, task: str) -> None:
    lm.require("causal-lm", task)
    lm.require_tokenizer(task)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    return context_ids, whole[len(context_ids):]


def prefix_token(tokenizer) -> int:
    """What an empty context is conditioned on (lm-eval uses the end-of-text token)."""
    for token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id):
        if token_id is not None:
            return token_id
    return 0


@torch.inference_mode()
def loglikelihoods(lm, pairs: list[tuple[str, str]], *, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(sum of continuation log-probs, whether greedy decoding would produce it) per pair."""
    lm = as_runtime(lm)
    tokenizer = lm.tokenizer
    max_length = lm.context
    requests = []
    for context, continuation in pairs:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not context_ids:
            context_ids = [prefix_token(tokenizer)]
        if not continuation_ids:
            raise SlmError(f"empty continuation after context {context[-40:]!r}")
        # Keep the last max_length+1 tokens; the final one is only a target.
        ids = (context_ids + continuation_ids)[-(max_length + 1):][:-1]
        requests.append((ids, continuation_ids))
    # Longest first, as lm-evaluation-harness does: batches of similar length waste little padding.
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    for start in range(0, len(order), batch_size):
        batch = [requests[i] for i in order[start:start + batch_size]]
        input_ids, attention = right_padded([ids for ids, _ in batch])
        width = input_ids.shape[1]
        # Only positions that predict continuation tokens need the (large) vocabulary projection.
        kept = width - min(len(ids) - len(continuation) for ids, continuation in batch)
        logits = lm.logits(input_ids, attention, keep=kept)
        offset = width - kept
        for row, (ids, continuation_ids) in enumerate(batch):
            count = len(continuation_ids)
            results[order[start + row]] = _score(logits[row, len(ids) - count - offset:len(ids) - offset],
                                                 continuation_ids)
        if progress:
            progress(len(batch))
    return results


def _score(logits: torch.Tensor, continuation_ids: list[int]) -> tuple[float, bool]:
    """(log-probability of the continuation, whether it is the greedy choice) from its positions' logits."""
    scores = F.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(continuation_ids, device=scores.device)
    return scores.gather(1, target[:, None]).sum().item(), bool((scores.argmax(dim=-1) == target).all())

