"""How each next token is picked, and how tokens become streamed text.

Every request draws from its own `torch.Generator`: concurrent requests never
share (or reseed) the global random state, so a seed gives the same answer
whether the request runs alone or beside others.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from slmkit.sampling import SamplingConfig  # defined torch-free, for the CLI's options


def row_generators(generator: torch.Generator, rows: int) -> list[torch.Generator]:
    """A CPU generator per row, seeded from `generator`: a row's draws do not depend on which rows share
    its batch, or on the engine that computes its logits."""
    seeds = torch.randint(0, 2**62, (rows,), generator=generator).tolist()
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def inverse_cdf_draw(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row, sampled exactly from softmax(logits) with one uniform number from the row's generator.

    torch.multinomial draws a random number per vocabulary entry from a serial generator: for 32 rows of a
    49k-word vocabulary that is a quarter of each generation step on a CPU."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum_(dim=-1)
    uniforms = torch.cat([torch.rand(1, generator=generator) for generator in generators]).to(cdf.device)
    # side="right": tokens of zero probability (an empty CDF step) are never chosen.
    choice = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(1), side="right")
    return choice.clamp_(max=logits.shape[-1] - 1).squeeze(1)


GREEDY_BELOW = 1e-5  # vLLM's threshold too


class TokenPicker:
    """One request's next-token choice: transformers' logits processors in generate's order (repetition
    penalty, then temperature, top-k, top-p, min-p), then greedy or a draw from this request's generator."""

    def __init__(self, sampling: SamplingConfig):
        from transformers import (LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                  TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

        # Below GREEDY_BELOW the temperature only overflows the softmax: such a request wants the top token.
        self.greedy = sampling.temperature < GREEDY_BELOW
        steps = []
        if sampling.repetition_penalty != 1.0:
            steps.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
        if not self.greedy:
            if sampling.temperature != 1.0:
                steps.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                steps.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                steps.append(TopPLogitsWarper(sampling.top_p))
            if sampling.min_p:
                steps.append(MinPLogitsWarper(sampling.min_p))
        self.processors = LogitsProcessorList(steps)
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)  # on the CPU: one uniform number per token

    def __call__(self, ids_so_far: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The next token [1, 1] after `ids_so_far` [1, tokens], from its logits `scores` [1, vocab]."""
        scores = self.processors(ids_so_far, scores.float())
        if self.greedy:
            return scores.argmax(dim=-1, keepdim=True)
        return inverse_cdf_draw(scores, [self.generator]).unsqueeze(1)


class TextPieces:
    """Tokens in, printable text out: transformers' TextStreamer decides where a piece may end (a space, a
    newline, a CJK character; never inside a multi-byte character), here without its queue and thread."""

    def __init__(self, tokenizer):
        from transformers import TextStreamer

        pieces: list[str] = []

        class Collect(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    pieces.append(text)

        self.pieces = pieces
        self.streamer = Collect(tokenizer, skip_prompt=False, skip_special_tokens=True)

    def add(self, token: int) -> list[str]:
        self.streamer.put(torch.tensor([token]))
        return self._take()

    def end(self) -> list[str]:
        self.streamer.end()
        return self._take()

    def _take(self) -> list[str]:
        taken = list(self.pieces)
        self.pieces.clear()
        return taken


def stream_tokens(tokenizer, stops: set[int], so_far: torch.Tensor, state: Any,
                  step: Callable[[Any, torch.Tensor], None], sampling: SamplingConfig,
                  cancel: threading.Event | None) -> Iterator[str]:
    """A runtime's generation loop: pick from `state.logits` [1, vocab], print, `step(state, token)` to feed the
    token [1, 1] and get the next logits; ends at a stop token, max_new_tokens, or `cancel` (checked before every
    token). `so_far` [1, tokens]: the ids the repetition penalty looks at."""
    picker, text = TokenPicker(sampling), TextPieces(tokenizer)

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    for produced in range(sampling.max_new_tokens):
        token = picker(so_far, state.logits)
        if cancelled() or int(token) in stops:
            break
        yield from text.add(int(token))
        # Checked again after the caller had the text: a stop asked for then costs no further step.
        if cancelled() or produced + 1 == sampling.max_new_tokens:
            break
        so_far = torch.cat([so_far, token.to(so_far.device)], dim=1)
        step(state, token)
    yield from text.end()
