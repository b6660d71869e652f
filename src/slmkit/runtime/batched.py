"""Answers to several prompts at once: one left-padded batch per forward pass on the torch runtime.

Decoding one prompt at a time leaves a CPU (or a GPU) mostly waiting on memory: every step reads all the
weights for one token. A batch reads them once for a token of every row. The loop is written here, not taken
from transformers' `generate`, for the reason `runtime.torch_backend` gives: `generate` samples every row
from the global random state, while here each row draws from its own `TokenPicker` (its own
`torch.Generator`, seeded per row), so a row's answer does not depend on which rows share its batch, and the
rows pick their tokens exactly as `slm generate` does (same logits processors, same repetition window).

Rows are padded on the left, so every row's next token comes from the last column; each row's positions count
from its own first token (`position_ids`), so a padded row sees the positions it would see alone and the
attention mask hides the padding. A row leaves the batch when it ends (a stop token, or its
`max_new_tokens`): its rows of the KV cache are dropped, so one long answer does not keep finished rows
computing. Answers equal one-at-a-time answers up to float rounding: a padded batch sums in another order
(differences ~1e-5 in SmolLM2-135M's logits), which can flip a greedy choice only between near-equal tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slmkit.runtime.interface import Model
from slmkit.runtime.sampling import SamplingConfig, TokenPicker
from slmkit.runtime.torch_backend import TorchModel


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


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [rows, longest]: each row at the right end, zeros before it."""
    width = max(map(len, rows))
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


class TorchBatch:
    """Rows of prompt ids decoded together on a torch causal LM: `start` prefills them (left-padded, each row's
    positions counting from its own first token), `step` feeds one token per live row, `keep` drops finished
    rows and their KV cache, `join` adds rows to a running batch (when `joins`). Each returns next-token logits
    [rows, vocab] of the rows it ran."""

    def __init__(self, lm: TorchModel):
        self.lm, self.rows, self.cache = lm, 0, None
        self._cache_name = lm._cache_argument()
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in lm._forward_arguments else {}

    @torch.inference_mode()
    def start(self, rows: list[list[int]]) -> torch.Tensor:
        input_ids, self.attention_mask = (tensor.to(self.lm.device) for tensor in left_padded(rows))
        self.positions = (self.attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        output = self.lm.model(input_ids=input_ids, attention_mask=self.attention_mask, position_ids=self.positions,
                               use_cache=True, **self._keep_last)
        self.rows = len(rows)
        return self._next_logits(output)

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(self.rows, 1)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self.lm.device).unsqueeze(1)
        output = self.lm.model(input_ids=input_ids, attention_mask=self.attention_mask, position_ids=self.positions,
                               use_cache=True, **{self._cache_name: self.cache})
        return self._next_logits(output)

    def keep(self, staying: list[int]) -> None:
        """Keep only these rows (indices into the live rows), in this order."""
        if staying == list(range(self.rows)):
            return
        self.rows = len(staying)
        if not staying:
            self.cache = None
            return
        kept = torch.tensor(staying, device=self.lm.device)
        self.cache.batch_select_indices(kept)
        self.attention_mask, self.positions = self.attention_mask[kept], self.positions[kept]
        # Columns that only the rows that left used are padding for all the rest: drop them, so a batch that
        # rows keep joining stays as wide as its longest row, not as old as the batch.
        first = int(self.attention_mask.any(dim=0).long().argmax())
        if first and self.joins:
            self.attention_mask = self.attention_mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    @property
    def joins(self) -> bool:
        """Whether rows can join this running batch: every cache layer is a plain growing one (a sliding-window
        layer keeps its own positions and cannot be padded)."""
        from transformers.cache_utils import DynamicLayer

        return self.cache is not None and all(type(layer) is DynamicLayer for layer in self.cache.layers)

    @torch.inference_mode()
    def join(self, rows: list[list[int]]) -> torch.Tensor:
        """Prefill new rows apart, then append them to the running rows, the narrower side padded on the left."""
        if not self.rows:
            return self.start(rows)
        new = TorchBatch(self.lm)
        logits = new.start(rows)
        width, new_width = self.attention_mask.shape[1], new.attention_mask.shape[1]
        left, new_left = max(0, new_width - width), max(0, width - new_width)
        self.attention_mask = torch.cat([_pad_left(self.attention_mask, left), _pad_left(new.attention_mask,
                                                                                          new_left)])
        self.positions = torch.cat([self.positions[:, -1:], new.positions[:, -1:]])
        for layer, new_layer in zip(self.cache.layers, new.cache.layers):
            layer.keys = torch.cat([_pad_left(layer.keys, left), _pad_left(new_layer.keys, new_left)])
            layer.values = torch.cat([_pad_left(layer.values, left), _pad_left(new_layer.values, new_left)])
        self.rows += len(rows)
        return logits

    def _next_logits(self, output) -> torch.Tensor:
        self.cache = getattr(output, self._cache_name)
        return output.logits[:, -1]


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Zeros before the sequence axis (the last of a mask, the third of a KV tensor [batch, heads, seq, dim])."""
    if not columns:
        return tensor
    axis = 1 if tensor.dim() == 2 else 2
    shape = list(tensor.shape)
    shape[axis] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


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
