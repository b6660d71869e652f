"""How far a model's next-token distributions are from a reference's on a text: what `llama-perplexity
--kl-divergence` reports for a quantized file against its float original (KL divergence of each scored token,
top-1 agreement, the perplexity ratio). Perplexity alone hides errors that cancel out over a text; KL shows how
often and how much the compressed model's choices move.

The windows are perplexity's (slmkit.evaluation.perplexity.ScoredText): every token after the first of its
window, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from slmkit.errors import SlmError
from slmkit.evaluation.perplexity import ScoredText
from slmkit.runtime import as_runtime

POSITIONS_PER_CHUNK = 256  # positions whose two log-softmaxes are held at once: 49k-token vocabularies are wide


@torch.inference_mode()
def divergence(lm, reference, text: str, *, max_length: int | None = None, stride: int | None = None,
               batch_size: int = 1, limit: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """`lm`'s perplexity metrics on `text` and its divergence from `reference`: `kl_mean`, `kl_median`, `kl_p99`,
    `kl_max` (KL(reference || lm) in nats per token), `top1_agreement` (share of positions where both rank the
    same token first), `reference_token_perplexity` and `perplexity_ratio` (lm's over the reference's).

    Example: `divergence(slmkit.load("model.q4_0.gguf", backend="llamacpp", logits_all=True),
    slmkit.load(), wiki_text, max_length=512)["kl_mean"]`."""
    lm, reference = as_runtime(lm), as_runtime(reference)
    scoring = ScoredText(lm, text, max_length, stride, limit)
    if scoring.max_length > reference.context:
        raise SlmError(f"--max-length {scoring.max_length} is longer than the reference's context "
                       f"({reference.context})")
    if reference.tokenizer(text).input_ids != scoring.ids.tolist():
        raise SlmError("the reference tokenizes the text differently from the model: KL divergence compares "
                       "next-token distributions over one vocabulary; use a reference with the model's tokenizer")
    totals = {"nll": 0.0, "reference_nll": 0.0}
    kls, agreements = [], []
    for input_ids, attention, labels in scoring.batches(batch_size, progress):
        logits = lm.logits(input_ids, attention)[:, :-1]
        reference_logits = reference.logits(input_ids, attention)[:, :-1]
        scored = labels != -100
        for part in _compared(logits[scored], reference_logits[scored], labels[scored]):
            kls.append(part["kl"])
            agreements.append(part["agree"])
            totals["nll"] += part["nll"]
            totals["reference_nll"] += part["reference_nll"]
    kl = torch.cat(kls).double().numpy()
    measured = scoring.metrics(totals["nll"])
    reference_perplexity = math.exp(totals["reference_nll"] / scoring.scored)
    return {**measured, "reference_token_perplexity": reference_perplexity,
            "perplexity_ratio": measured["token_perplexity"] / reference_perplexity,
            "kl_mean": float(kl.mean()), "kl_median": float(np.median(kl)), "kl_p99": float(np.percentile(kl, 99)),
            "kl_max": float(kl.max()), "top1_agreement": float(torch.cat(agreements).float().mean())}


def _compared(logits: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor):
    """Per chunk of scored positions ([positions, vocab] each): each position's KL(reference || model), whether
    both rank the same token first, and the two summed negative log-likelihoods of the targets."""
    # A vocabulary padded past the tokenizer's (an embedding rounded up to a multiple of 64) holds tokens no text
    # contains; both sides are compared over the ids they share.
    width = min(logits.shape[-1], reference_logits.shape[-1])
    for start in range(0, len(targets), POSITIONS_PER_CHUNK):
        chunk = slice(start, start + POSITIONS_PER_CHUNK)
        log_q = F.log_softmax(logits[chunk, :width].float(), dim=-1)
        log_p = F.log_softmax(reference_logits[chunk, :width].float().to(log_q.device), dim=-1)
        target = targets[chunk].to(log_q.device).unsqueeze(1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_(min=0)  # float rounding can leave -1e-9
        yield {"kl": kl.cpu(),
               "agree": (log_q.argmax(-1) == log_p.argmax(-1)).cpu(),
               "nll": -log_q.gather(1, target).sum().item(), "reference_nll": -log_p.gather(1, target).sum().item()}
