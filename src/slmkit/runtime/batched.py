"""Answers to several prompts at once, one forward pass per step for all of them: on any runtime that decodes
rows together (`Model.open_batch`: torch causal LMs, llama.cpp), else one prompt after another.

Decoding one prompt at a time leaves a CPU (or a GPU) mostly waiting on memory: every step reads all the
weights for one token. A batch reads them once for a token of every row. Each row draws from its own
`TokenPicker` (its own `torch.Generator`, seeded per row), so a row's answer does not depend on which rows share
its batch, and the rows pick their tokens exactly as `slm generate` does (same logits processors, same
repetition window).

A row leaves the batch when it ends (a stop token, or its `max_new_tokens`), so one long answer does not keep
finished rows computing. Answers equal one-at-a-time answers up to float rounding: a padded batch sums in
another order (differences ~1e-5 in SmolLM2-135M's logits), which can flip a greedy choice only between
near-equal tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slmkit.runtime.interface import Model
from slmkit.runtime.sampling import SamplingConfig, TokenPicker


@dataclass
class Answer:
    text: str
    tokens: int  # tokens generated, the stop token not counted
    finished: bool  # the model ended the answer itself (False: cut at max_new_tokens)


def batches_rows(lm: Model) -> bool:
    """Whether `answer_batch` runs several rows in one forward pass on this model (else one after another)."""
    return lm.kind == "causal-lm" and lm.decodes_rows_together


def answer_batch(lm: Model, rows: list[list[int]], samplings: list[SamplingConfig]) -> list[Answer]:
    """The continuation of each row of prompt ids, sampled with its own `SamplingConfig` (their seeds make
    rows repeatable): decoded as one batch where the runtime can, else streamed one row at a time."""
    if batches_rows(lm):
        return _decode_together(lm, rows, samplings)
    return [_stream_one(lm, ids, sampling) for ids, sampling in zip(rows, samplings)]


def _stream_one(lm: Model, ids: list[int], sampling: SamplingConfig) -> Answer:
    text = "".join(lm.stream(ids, sampling))
    # A streaming runtime yields text, not token ids: the count is the answer re-tokenized, so `finished` is
    # an estimate (re-tokenizing can merge a few tokens of a cut answer and count it as finished).
    tokens = len(lm.tokenizer(text, add_special_tokens=False).input_ids)
    return Answer(text, tokens, tokens < sampling.max_new_tokens)


@torch.inference_mode()
def _decode_together(lm: Model, rows: list[list[int]], samplings: list[SamplingConfig]) -> list[Answer]:
    stops = lm.stop_tokens()
    pickers = [TokenPicker(sampling) for sampling in samplings]
    length = max(len(ids) + sampling.max_new_tokens for ids, sampling in zip(rows, samplings))
    batch = lm.open_batch(len(rows), length)
    logits = batch.advance(list(enumerate(rows)), [])
    written = [torch.tensor([ids], dtype=torch.long, device=logits.device) for ids in rows]  # repetition windows
    generated: list[list[int]] = [[] for _ in rows]
    finished = [False] * len(rows)
    active = list(range(len(rows)))  # the row of each line of `logits`
    while active:
        going = []
        for line, row in enumerate(active):
            token = pickers[row](written[row], logits[line:line + 1])
            if int(token) in stops:
                finished[row] = True
            else:
                generated[row].append(int(token))
                written[row] = torch.cat([written[row], token.to(logits.device)], dim=1)
            if finished[row] or len(generated[row]) >= samplings[row].max_new_tokens:
                batch.release(row)
            else:
                going.append((row, int(token)))
        active = [row for row, _ in going]
        if active:
            logits = batch.advance([], going)
    return [Answer(lm.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), done)
            for tokens, done in zip(generated, finished)]
