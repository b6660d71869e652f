"""On-policy distillation (GKD, Agarwal et al. 2024): in a share of the training batches the student answers the
batch's prompts itself and the teacher scores those answers, so the student learns on the text it will
actually produce instead of only on the data's (the mismatch between the two is what on-policy KD removes).

A prompt is a row's tokens before its first label (a chat's conversation up to the first assistant turn, a
completion's prompt); the student samples at most `max_new_tokens` after it, within max_length, stopping after
an end token, and the sampled tokens become the row's labels. A row without a prompt or without a label has
nothing to answer and stays as it is. Whether a batch is on-policy is drawn from the run's seed and the step,
and so are the seeds its answers are sampled with, so a resumed run draws the same batches and answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from slmkit.data.training import IGNORE

# sample(prompts, max_new_tokens) -> the new tokens of each prompt's answer
Sampler = Callable[[list[list[int]], int], list[list[int]]]


def draws_on_policy(ratio: float, seed: int, step: int, micro_batch: int) -> bool:
    return ratio > 0 and random.Random(f"{seed}:{step}:{micro_batch}").random() < ratio


def answer_seeds(rows: int, seed: int, step: int, micro_batch: int, process: int) -> list[int]:
    """A sampling seed for each of a micro-batch's `rows` prompts, drawn from the run's seed and where the batch
    is: a resumed run samples the same answers, and no two rows, batches or processes share their draws."""
    return [random.Random(f"answer:{seed}:{step}:{micro_batch}:{process}:{row}").getrandbits(63)
            for row in range(rows)]


def on_policy_batch(inputs: dict, sample: Sampler, *, pad_id: int, end_ids: frozenset[int], max_length: int,
                    max_new_tokens: int) -> dict:
    """`inputs` (right-padded input_ids, attention_mask, labels) with each row's answer replaced by the
    student's: prompt tokens and padding labelled IGNORE, the sampled tokens (through the first end token)
    labelled with themselves."""
    ids, labels = inputs["input_ids"], inputs["labels"]
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    rows, prompts, answering = [], [], []  # rows: (tokens, labels), the data's until an answer replaces them
    for row in range(ids.shape[0]):
        length = int(mask[row].sum())
        rows.append((ids[row, :length].tolist(), labels[row, :length].tolist()))
        labelled = (labels[row, :length] != IGNORE).nonzero()
        start = int(labelled[0]) if len(labelled) else 0
        if start > 0:  # rows are at most max_length long: a prompt always leaves room for an answer
            prompts.append(ids[row, :start].tolist())
            answering.append(row)
    if prompts:
        budget = min(max_new_tokens, max_length - min(len(prompt) for prompt in prompts))
        for row, prompt, answer in zip(answering, prompts, sample(prompts, budget)):
            answer = _through_first_end(answer[:max_length - len(prompt)], end_ids)
            rows[row] = (prompt + answer, [IGNORE] * len(prompt) + answer)
    width = max(len(tokens) for tokens, _ in rows)
    batch = {
        "input_ids": torch.tensor([t + [pad_id] * (width - len(t)) for t, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t, _ in rows]),
        "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in rows]),
    }
    if "position_ids" in inputs:
        batch["position_ids"] = torch.tensor([list(range(len(t))) + [0] * (width - len(t)) for t, _ in rows])
    return {key: value.to(ids.device) for key, value in batch.items()}


def _through_first_end(tokens: list[int], end_ids: frozenset[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in end_ids:
            return tokens[:index + 1]
    return tokens
