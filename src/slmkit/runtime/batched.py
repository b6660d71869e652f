"""Answers to several prompts at once: one left-padded batch per forward pass on the torch runtime.

Decoding one prompt at a time leaves a CPU (or a GPU) mostly waiting on memory: every step reads all the
weights for one token. A batch reads them once for a token of every row. The loop is written here, not taken
from transformers' `generate`, for the reason `runtime.torch_backend` gives: `generate` samples every row
from the global random state, while here each row draws from its own `TokenPicker` (its own
`torch.Generator`, seeded per row), so a row's answer does not depend on which rows share its batch, and the
rows pick their tokens exactly as `slm generate` does (same logits processors, same repetition window).

The batch is `runtime.torch_rows.TorchBatch` (left-padded, one KV cache). A row leaves it when it ends (a stop
token, or its `max_new_tokens`): its rows of the KV cache are dropped, so one long answer does not keep
finished rows computing. Answers equal one-at-a-time answers up to float rounding: a padded batch sums in
another order (differences ~1e-5 in SmolLM2-135M's logits), which can flip a greedy choice only between
near-equal tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slmkit.runtime.interface import Model
from slmkit.runtime.sampling import SamplingConfig, TokenPicker
from slmkit.runtime.torch_backend import TorchModel
from slmkit.runtime.torch_rows import TorchBatch


@dataclass
class Answer:
    text: str
    tokens: int  # tokens generated, the stop token not counted
    finished: bool  # the model ended the answer itself (False: cut at max_new_tokens)


def batches_rows(lm: Model) -> bool:
    """Whether `answer_batch` runs several rows in one forward pass on this model (else one after another)."""
    return isinstance(lm, TorchModel) and lm.kind == "causal-lm"


def answer_batch(lm: Model, rows: list[list[int]], samplings: list[SamplingConfig]) -> list[Answer]:
    """The continuation of each row of prompt ids, sampled with its own `SamplingConfig` (their seeds make
    rows repeatable). The torch runtime decodes them as one batch; other runtimes stream one row at a time."""
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
def _decode_together(lm: TorchModel, rows: list[list[int]], samplings: list[SamplingConfig]) -> list[Answer]:
    device, stops = lm.device, lm.stop_tokens()
    pickers = [TokenPicker(sampling) for sampling in samplings]
    written = [torch.tensor([ids], dtype=torch.long, device=device) for ids in rows]  # the repetition window
    generated: list[list[int]] = [[] for _ in rows]
    finished = [False] * len(rows)
    batch = TorchBatch(lm)
    logits = batch.start(rows)
    active = list(range(len(rows)))  # the original row of each batch row
    while True:
        staying, next_tokens = [], []
        for batch_row, row in enumerate(active):
            token = pickers[row](written[row], logits[batch_row:batch_row + 1])
            if int(token) in stops:
                finished[row] = True
                continue
            generated[row].append(int(token))
            written[row] = torch.cat([written[row], token], dim=1)
            if len(generated[row]) < samplings[row].max_new_tokens:
                staying.append(batch_row)
                next_tokens.append(int(token))
        if not staying:
            break
        batch.keep(staying)
        active = [active[batch_row] for batch_row in staying]
        logits = batch.step(next_tokens)
    return [Answer(lm.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), done)
            for tokens, done in zip(generated, finished)]
