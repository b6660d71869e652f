"""Rows decoded together, one forward pass per step for all of them, on any runtime that can (`Model.open_batch`:
torch causal LMs, llama.cpp): `decode_rows` is the one loop, under answers to prompts (`answer_batch`, what synth
asks a teacher; `answer_ids`, what on-policy distillation asks the student) and plain sampling at temperature 1
(`sample_rows`, the text data-free calibration samples). Elsewhere answers come one prompt after another.

Decoding one prompt at a time leaves a CPU (or a GPU) mostly waiting on memory: every step reads all the
weights for one token. A batch reads them once for a token of every row. Each row draws from its own
`torch.Generator`, so a row's tokens do not depend on which rows share its batch, and answers pick their tokens
exactly as `slm generate` does (`TokenPicker`: same logits processors, same repetition window).

A row leaves the batch when it ends (a stop token, or its budget), so one long answer does not keep finished
rows computing. Answers equal one-at-a-time answers up to float rounding: a padded batch sums in another order
(differences ~1e-5 in SmolLM2-135M's logits), which can flip a greedy choice only between near-equal tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from slmkit.errors import SlmError
from slmkit.runtime.interface import Model
from slmkit.runtime.sampling import SamplingConfig, TokenPicker, inverse_cdf_draw

# pick(rows, logits) -> one token for each row (indices into the prompts), from its line of logits [rows, vocab]
Pick = Callable[[list[int], torch.Tensor], list[int]]


@dataclass
class Answer:
    text: str
    tokens: int  # tokens generated, the stop token not counted
    finished: bool  # the model ended the answer itself (False: cut at max_new_tokens)


def batches_rows(lm: Model) -> bool:
    """Whether `answer_batch` runs several rows in one forward pass on this model (else one after another)."""
    return lm.kind == "causal-lm" and lm.decodes_rows_together


@torch.inference_mode()
def decode_rows(lm: Model, prompts: list[list[int]], budgets: list[int], pick: Pick, *,
                stops: set[int] | frozenset[int] = frozenset(), slots: int | None = None,
                progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """The tokens each prompt's row writes: at most its budget, through the first `stops` token. `slots` rows
    are decoded together (default: all), in the prompts' order, a waiting row taking the first slot free when
    the batch admits it. `progress(tokens)` after every step: the tokens the rows started so far hold."""
    slots = min(slots or len(prompts), len(prompts))
    batch = lm.open_batch(slots, max(len(ids) + budget for ids, budget in zip(prompts, budgets)))
    written: list[list[int]] = [[] for _ in prompts]
    waiting, live, going = list(range(len(prompts))), {}, []  # live: slot -> row; going: (row, its last token)
    held = 0
    while waiting or going:
        new = []
        if batch.admits(len(live)):
            for slot in [slot for slot in range(slots) if slot not in live][:len(waiting)]:
                live[slot] = waiting.pop(0)
                new.append(slot)
                held += len(prompts[live[slot]])
        slot_of = {row: slot for slot, row in live.items()}
        logits = batch.advance([(slot, prompts[live[slot]]) for slot in new],
                               [(slot_of[row], token) for row, token in going])
        rows = [live[slot] for slot in new] + [row for row, _ in going]
        going = []
        for row, token in zip(rows, pick(rows, logits)):
            written[row].append(token)
            if token in stops or len(written[row]) >= budgets[row]:
                batch.release(slot_of[row])
                del live[slot_of[row]]
            else:
                going.append((row, token))
        held += len(rows)
        if progress is not None:
            progress(held)
    return written


def answer_batch(lm: Model, rows: list[list[int]], samplings: list[SamplingConfig]) -> list[Answer]:
    """The continuation of each row of prompt ids, sampled with its own `SamplingConfig` (their seeds make
    rows repeatable): decoded as one batch where the runtime can, else streamed one row at a time."""
    if not batches_rows(lm):
        return [_stream_one(lm, ids, sampling) for ids, sampling in zip(rows, samplings)]
    stops = lm.stop_tokens()
    answers = []
    for tokens in answer_ids(lm, rows, samplings):
        finished = bool(tokens) and tokens[-1] in stops
        tokens = tokens[:-1] if finished else tokens
        answers.append(Answer(lm.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), finished))
    return answers


def answer_ids(lm: Model, rows: list[list[int]], samplings: list[SamplingConfig], *,
               stops: set[int] | frozenset[int] | None = None) -> list[list[int]]:
    """The ids each row of prompt ids continues with, sampled with its own `SamplingConfig`, through the stop
    token that ended it (if one did; `stops`: the model's own by default): all rows decoded together
    (`batches_rows`)."""
    pickers = [TokenPicker(sampling) for sampling in samplings]
    windows: dict[int, torch.Tensor] = {}  # each row's ids so far: its repetition window

    def pick(lines: list[int], logits: torch.Tensor) -> list[int]:
        tokens = []
        for line, row in enumerate(lines):
            window = windows.get(row)
            if window is None:
                window = torch.tensor([rows[row]], dtype=torch.long, device=logits.device)
            token = pickers[row](window, logits[line:line + 1])
            windows[row] = torch.cat([window, token.to(logits.device)], dim=1)
            tokens.append(int(token))
        return tokens

    return decode_rows(lm, rows, [sampling.max_new_tokens for sampling in samplings], pick,
                       stops=lm.stop_tokens() if stops is None else stops)


def sample_rows(lm: Model, prefixes: list[list[int]], length: int, generators: list[torch.Generator], *,
                banned: tuple[int, ...] = (), wave: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """[rows, length] token ids: each prefix continued by plain sampling at temperature 1 (never a `banned`
    token), `wave` rows decoded together (default: all). `progress(tokens, total)` after every step.

    Each token is drawn from the logits with its row's generator (`inverse_cdf_draw`), so a seed gives the
    same rows whatever the wave and the rows beside them, and the same on every runtime that computes the same
    logits (llama.cpp and torch on one GGUF's float weights)."""
    if not 0 < min(map(len, prefixes)) <= max(map(len, prefixes)) < length:
        raise SlmError(f"every prefix must hold 1 to {length - 1} tokens to sample {length}")

    def pick(rows: list[int], logits: torch.Tensor) -> list[int]:
        if banned:
            logits[:, list(banned)] = float("-inf")
        return inverse_cdf_draw(logits, [generators[row] for row in rows]).tolist()

    total = len(prefixes) * length
    written = decode_rows(lm, prefixes, [length - len(ids) for ids in prefixes], pick, slots=wave,
                          progress=None if progress is None else lambda tokens: progress(tokens, total))
    return torch.tensor([ids + tokens for ids, tokens in zip(prefixes, written)], dtype=torch.long)


def _stream_one(lm: Model, ids: list[int], sampling: SamplingConfig) -> Answer:
    text = "".join(lm.stream(ids, sampling))
    # A streaming runtime yields text, not token ids: the count is the answer re-tokenized, so `finished` is
    # an estimate (re-tokenizing can merge a few tokens of a cut answer and count it as finished).
    tokens = len(lm.tokenizer(text, add_special_tokens=False).input_ids)
    return Answer(text, tokens, tokens < sampling.max_new_tokens)
