"""Perplexity over a text: token perplexity, word perplexity and bits per byte.

Token perplexity follows the GPTQ/Wanda convention: tokenize the whole text,
cut it into non-overlapping windows of `max_length`, score every token after
the first of its window. With `stride`, windows of `max_length` start every
`stride` tokens and only the tokens not scored before count (the transformers
docs' sliding-window method). Word perplexity and bits per byte use the same
summed negative log-likelihood over the words and UTF-8 bytes of the text,
as lm-evaluation-harness reports them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from slmkit.errors import SlmError
from slmkit.evaluation.loglikelihood import require_causal
from slmkit.runtime import as_runtime

DEFAULT_MAX_LENGTH = 2048


def windows(n_tokens: int, max_length: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window; positions index the token stream."""
    if stride is None or stride >= max_length:
        return [(begin, min(begin + max_length, n_tokens), begin + 1)
                for begin in range(0, n_tokens, max_length) if min(begin + max_length, n_tokens) - begin > 1]
    spans, scored_until = [], 1
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        if end > scored_until:
            spans.append((begin, end, max(scored_until, begin + 1)))
            scored_until = end
        if end == n_tokens:
            break
    return spans


def check_max_length(max_length: int | None) -> None:
    """Before a model opens (on any runtime): a window shorter than two tokens scores nothing."""
    if max_length is not None and max_length < 2:
        raise SlmError(f"--max-length must be at least 2, got {max_length}")


@torch.inference_mode()
def perplexity(lm, text: str, *, max_length: int | None = None, stride: int | None = None, batch_size: int = 1,
               limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Perplexity metrics of `lm` on `text`. `limit` keeps the first N windows."""
    lm = as_runtime(lm)
    scoring = ScoredText(lm, text, max_length, stride, limit)
    total_nll = 0.0
    for input_ids, attention, labels in scoring.batches(batch_size, progress):
        logits = lm.logits(input_ids, attention)
        total_nll += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten().to(logits.device),
                                     ignore_index=-100, reduction="sum").item()
    return scoring.metrics(total_nll)


class ScoredText:
    """A text cut into the windows perplexity scores (every token after the first of its window, once), checked
    against the model's context before anything runs."""

    def __init__(self, lm, text: str, max_length: int | None, stride: int | None, limit: int | None):
        require_causal(lm, "perplexity")
        if max_length is None:
            max_length = min(lm.context, DEFAULT_MAX_LENGTH)
        check_max_length(max_length)
        if max_length > lm.context:
            raise SlmError(f"--max-length {max_length} is longer than the model's context ({lm.context})")
        if stride is not None and not 0 < stride <= max_length:
            raise SlmError(f"--stride must be between 1 and --max-length ({max_length}), got {stride}")
        self.text, self.tokenizer, self.max_length, self.stride = text, lm.tokenizer, max_length, stride
        self.ids = torch.tensor(lm.tokenizer(text).input_ids, dtype=torch.long)
        self.spans = windows(len(self.ids), max_length, stride)[:limit]
        if not self.spans:
            raise SlmError("the text is too short: it has fewer than two tokens")
        self.scored = 0

    def batches(self, batch_size: int, progress: Callable[[int, int], None] | None = None):
        """(input_ids, attention_mask, labels) per batch of windows; labels [rows, width - 1] hold the token each
        position predicts, -100 where it is not scored."""
        spans = self.spans
        for start in range(0, len(spans), batch_size):
            group = spans[start:start + batch_size]
            width = max(end - begin for begin, end, _ in group)
            input_ids = torch.zeros(len(group), width, dtype=torch.long)
            labels = torch.full((len(group), width), -100, dtype=torch.long)
            attention = torch.zeros(len(group), width, dtype=torch.long)
            for row, (begin, end, first_scored) in enumerate(group):
                input_ids[row, :end - begin] = self.ids[begin:end]
                attention[row, :end - begin] = 1
                labels[row, first_scored - begin:end - begin] = self.ids[first_scored:end]
            self.scored += int((labels[:, 1:] != -100).sum())
            yield input_ids, attention, labels[:, 1:]
            if progress:
                progress(min(start + batch_size, len(spans)), len(spans))

    def metrics(self, total_nll: float) -> dict:
        """Token and word perplexity and bits per byte of a summed negative log-likelihood over the windows."""
        covered_end = self.spans[-1][1]
        covered_text = self.text if covered_end == len(self.ids) else self.tokenizer.decode(self.ids[:covered_end])
        words = len(re.split(r"\s+", covered_text.strip()))
        n_bytes = len(covered_text.encode("utf-8"))
        return {
            "token_perplexity": math.exp(total_nll / self.scored),
            "word_perplexity": math.exp(total_nll / words),
            "bits_per_byte": total_nll / (n_bytes * math.log(2)),
            "nll_sum": total_nll,
            "scored_tokens": self.scored,
            "tokens": int(covered_end),
            "words": words,
            "bytes": n_bytes,
            "windows": len(self.spans),
            "max_length": self.max_length,
            "stride": self.stride,
        }
