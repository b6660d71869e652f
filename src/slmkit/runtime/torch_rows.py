"""Rows of prompt ids decoded together on the torch runtime: the batch (`TorchBatch`), and the two ways the
server's engine drives it (`Model.open_batch`).

Rows are padded on the left, so every row's next token comes from the last column; each row's positions count
from its own first token (`position_ids`), so a padded row sees the positions it would see alone and the
attention mask hides the padding.
"""

from __future__ import annotations

import torch

from slmkit.runtime.interface import Model


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

    def __init__(self, lm: Model):  # a causal LM on torch (`TorchModel`), whose forward pass it calls
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


class TorchRows:
    """Continuous batching on a torch causal LM (`RowBatch`): new rows join the running batch at the next step
    (`TorchBatch.join`); on a model whose cache cannot take them (sliding-window layers) they wait until the
    batch is empty."""

    def __init__(self, lm: Model, slots: int):
        self.batch, self.slots, self.order = TorchBatch(lm), slots, []

    def admits(self, running: int) -> bool:
        return running == 0 or (running < self.slots and self.batch.joins)

    def advance(self, new: list[tuple[int, list[int]]], going: list[tuple[int, int]]) -> torch.Tensor:
        logits = []
        if going:
            live = {slot: index for index, slot in enumerate(self.order)}
            self.batch.keep([live[slot] for slot, _ in going])
            logits.append(self.batch.step([token for _, token in going]))
        elif self.order:
            self.batch.keep([])
        self.order = [slot for slot, _ in going]
        if new:
            logits.insert(0, self.batch.join([ids for _, ids in new]))
            self.order += [slot for slot, _ in new]
        return torch.cat(logits)

    def release(self, slot: int) -> None:
        """A finished row leaves at the next `advance` (it is not among the rows going on)."""


class TurnRows:
    """Rows that cannot share a forward pass (a seq2seq model, `RowBatch`): each keeps its own state and steps
    in turn."""

    def __init__(self, lm: Model, slots: int, length: int):
        self.lm, self.slots, self.length, self.states = lm, slots, length, {}

    def admits(self, running: int) -> bool:
        return running < self.slots

    def advance(self, new: list[tuple[int, list[int]]], going: list[tuple[int, int]]) -> torch.Tensor:
        rows = []
        for slot, ids in new:
            self.states[slot] = self.lm.prefill(ids, self.length)
            rows.append(self.states[slot].logits)
        for slot, token in going:
            state = self.states[slot]
            self.lm.decode(state, torch.tensor([[token]], device=state.next_token.device))
            rows.append(state.logits)
        return torch.cat(rows)

    def release(self, slot: int) -> None:
        self.states.pop(slot, None)
