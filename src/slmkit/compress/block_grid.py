"""The machinery every llama.cpp block format shares (compress/blocks.py lists the formats).

A value is `step * level + offset`: `level` is what a code stands for (code i means levels[i]), `step` and
`offset` are fixed per sub-block and computed from the stored parameters with float32 operations in the order
gguf-py's dequantizers use, so the values here are the values a reader gets, bit for bit.

The search (`fit_scale`) finds, per group of weights, the step (and offset) with the least importance-weighted
squared error: many candidate steps around the group's extreme, each rounded to its nearest levels; for the
few best, a weighted least-squares refit of step and offset on those levels and a re-round; then more refit /
re-round rounds on the winner. llama.cpp's make_qx_quants / make_qkx2_quants taught the idea; this search
weighs exactly the error we report.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from slmkit.errors import SlmError

SEARCH_ELEMENTS = 1 << 20  # candidates x weights held at once by a search (4 MB a temporary)
# Candidate steps put the group's extreme this many level gaps beyond (> 0: clip it) or inside an outer level;
# 0 is llama.cpp's reference rounding, so the search never does worse than it.
CANDIDATE_SHIFTS = tuple(i / 5 - 1 for i in range(16))
# The share of the shift an affine candidate takes at its low end: 0 keeps the minimum on the lowest level (the
# reference), 0.5 clips (or widens) both ends alike.
AFFINE_LOW_SHARES = (0.0, 0.5)
FINALISTS = 4  # candidates with the least error as rounded, refitted
REFITS = 2  # refit / re-round rounds on the best candidate


@dataclass(frozen=True)
class BlockParams:
    """A tensor's block parameters as the file stores them: [rows, blocks], sub-block ones [rows, blocks, subs]."""

    d: torch.Tensor  # float16 block scale
    m: torch.Tensor | None = None  # float16 block minimum, added to every value (q4_1, q5_1)
    dmin: torch.Tensor | None = None  # float16 scale of the sub-block mins (q2_K, q4_K, q5_K)
    scales: torch.Tensor | None = None  # int8 sub-block scales, the signed integer the step multiplies (k-quants)
    mins: torch.Tensor | None = None  # int8 sub-block mins, dmin * min is subtracted (q2_K, q4_K, q5_K)

    def blocks(self, start: int, stop: int) -> BlockParams:
        """The parameters of blocks start..stop-1 of every row."""
        return BlockParams(**{field.name: None if (value := getattr(self, field.name)) is None
                              else value[:, start:stop] for field in fields(self)})

    @staticmethod
    def concat(parts: list[BlockParams], dim: int = 1) -> BlockParams:
        """Blocks side by side (dim 1: GPTQ fits one block at a time, the export takes the tensor), or rows (0)."""
        return BlockParams(**{field.name: None if getattr(parts[0], field.name) is None
                              else torch.cat([getattr(part, field.name) for part in parts], dim=dim)
                              for field in fields(BlockParams)})


class Levels:
    """The values codes stand for before scaling, ascending: code i means values[i]."""

    def __init__(self, values: tuple[int, ...] | range):
        values = tuple(values)
        self.table = torch.tensor(values, dtype=torch.float32)
        self.midpoints = (self.table[1:] + self.table[:-1]) / 2
        self.low, self.high, self.count = values[0], values[-1], len(values)
        self.uniform = values == tuple(range(self.low, self.high + 1))
        self.low_gap, self.high_gap = values[1] - values[0], values[-1] - values[-2]
        # Integer levels have their midpoints on multiples of 1/2, so the nearest level is one code per half-unit
        # cell (c/2, (c+1)/2]: a lookup by cell instead of torch.bucketize's binary search, about 5x slower.
        self.first_cell = 2 * self.low - 1
        cells = torch.arange(self.first_cell, 2 * self.high + 1)
        self.cell_codes = torch.bucketize((cells + 0.5) / 2, self.midpoints).to(torch.uint8)
        self.cell_levels = self.table[self.cell_codes.long()]

    def nearest(self, t: torch.Tensor) -> torch.Tensor:
        """uint8 codes of the levels nearest to t (a tie goes to the lower level of a table)."""
        if self.uniform:
            return t.round().sub_(self.low).clamp_(0, self.count - 1).to(torch.uint8)
        return torch.take(self.cell_codes.to(t.device), self._cell(t))

    def round(self, t: torch.Tensor) -> torch.Tensor:
        """The float32 levels nearest to t: of(nearest(t)) without the codes, for searches."""
        if self.uniform:
            return t.round().clamp_(self.low, self.high)
        return torch.take(self.cell_levels.to(t.device), self._cell(t))

    def _cell(self, t: torch.Tensor) -> torch.Tensor:
        return (t * 2).ceil_().sub_(self.first_cell + 1).clamp_(0, len(self.cell_codes) - 1).long()

    def of(self, codes: torch.Tensor) -> torch.Tensor:
        """The float32 levels of uint8 codes."""
        if self.uniform:
            return codes.float().add_(self.low)
        return self.table.to(codes.device)[codes.long()]


def grid_position(x: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """x in units of step from offset, where the nearest level is x's; a zero step puts x at zero."""
    shifted = x if offset is None else x - offset
    return shifted / torch.where(step == 0, torch.inf, step)


def grid_values(level: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """step * level (+ offset): gguf-py's float32 multiply, then add (x - y is x + (-y) in IEEE arithmetic)."""
    values = step * level
    return values if offset is None else values.add_(offset)


def weighted_error(x: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (x - values).square_().mul_(weights).sum(dim=-1)


def to_half(value: torch.Tensor | None) -> torch.Tensor | None:
    """The float32 value of the nearest float16: what a stored d, m or dmin reads back as."""
    return None if value is None else value.half().float()


def fit_scale(x: torch.Tensor, weights: torch.Tensor, levels: Levels, shift: str,
              half: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Per group (the last dim of x), the (step, offset, levels, error) with the least weighted squared error.

    shift "none": value = step * level; "free": + an offset (q4_1's m); "nonpositive": + an offset <= 0 with
    a step >= 0 (the k-quants' subtracted mins). half: step and offset are float16 values (d, m stored as is).
    step, offset and error keep a trailing dim of 1; rows (dim 0) are searched a slice at a time.
    """
    weights = weights.expand_as(x)
    candidates = len(CANDIDATE_SHIFTS) * max(2, len(AFFINE_LOW_SHARES))  # two ends, or the affine shares
    rows = max(1, SEARCH_ELEMENTS // (candidates * x[0].numel()))
    parts = [_search(x_part, w_part, levels, shift, half) for x_part, w_part in zip(x.split(rows), weights.split(rows))]
    step, offset, level, error = (torch.cat(part) if part[0] is not None else None for part in zip(*parts))
    return step, offset, level, error


def _search(x, weights, levels, shift, half):
    step, offset = _candidates(x, levels, shift)
    if half:
        step, offset = to_half(step), to_half(offset)
    state = (step, offset, *_round(x, weights, levels, step, offset))
    finalists = state[3].topk(min(FINALISTS, len(step)), dim=0, largest=False).indices
    state = _improve(x, weights, levels, shift, half, [_take(value, finalists) for value in state])
    best = state[3].argmin(dim=0, keepdim=True)
    state = [None if value is None else _take(value, best)[0] for value in state]
    for _ in range(REFITS):
        state = _improve(x, weights, levels, shift, half, state)
    return state


def _take(value: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """The candidates index names (along dim 0), broadcast over the group's elements."""
    return None if value is None else value.gather(0, index.expand(len(index), *value.shape[1:]))


def _improve(x, weights, levels, shift, half, state):
    """A refit of (step, offset) on the codes and a re-round, kept per group where it lowers the error."""
    step, offset, level, error = state
    new_step, new_offset = _refit(x, weights, level, shift, step, offset, half)
    new_level, new_error = _round(x, weights, levels, new_step, new_offset)
    better = new_error < error
    return (torch.where(better, new_step, step), None if offset is None else torch.where(better, new_offset, offset),
            torch.where(better, new_level, level), torch.where(better, new_error, error))


def _round(x, weights, levels, step, offset):
    level = levels.round(grid_position(x, step, offset))
    return level, weighted_error(x, grid_values(level, step, offset), weights).unsqueeze(-1)


def _candidates(x: torch.Tensor, levels: Levels, shift: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Candidate (step, offset), [candidates, *x.shape[:-1], 1]: the group's extreme on or near an outer level."""
    shifts = torch.tensor(CANDIDATE_SHIFTS, device=x.device).view(-1, *[1] * x.dim())
    if shift == "none":
        extreme = x.gather(-1, x.abs().argmax(dim=-1, keepdim=True))
        targets = [end + (1 if end > 0 else -1) * gap * shifts
                   for end, gap in ((levels.low, levels.low_gap), (levels.high, levels.high_gap)) if end]
        return torch.cat([extreme / target for target in targets]), None
    low, high = x.min(dim=-1, keepdim=True).values, x.max(dim=-1, keepdim=True).values
    if shift == "nonpositive":
        low = low.clamp(max=0)
    step = (high - low) / (levels.high - levels.low + shifts)
    offsets = [low - (levels.low + share * shifts) * step for share in AFFINE_LOW_SHARES]
    offset = torch.cat(offsets)
    if shift == "nonpositive":
        offset = offset.clamp_max(0)
    return torch.cat([step] * len(offsets)), offset


def _refit(x, weights, level, shift, step, offset, half):
    """Weighted least-squares step (and offset) for fixed levels; degenerate groups keep what they had."""
    weighted_level = weights * level
    sum_l2 = (weighted_level * level).sum(-1, keepdim=True)
    sum_lx = (weighted_level * x).sum(-1, keepdim=True)
    plain = torch.where(sum_l2 > 0, sum_lx / sum_l2, step)
    if shift == "none":
        return to_half(plain) if half else plain, None
    sum_w = weights.sum(-1, keepdim=True)
    sum_l = weighted_level.sum(-1, keepdim=True)
    sum_x = (weights * x).sum(-1, keepdim=True)
    det = sum_w * sum_l2 - sum_l * sum_l
    solvable = det > 1e-6 * sum_w * sum_l2
    det = torch.where(solvable, det, 1)
    new_step = torch.where(solvable, (sum_w * sum_lx - sum_l * sum_x) / det, step)
    new_offset = torch.where(solvable, (sum_l2 * sum_x - sum_l * sum_lx) / det, offset)
    if shift == "nonpositive":
        positive = new_offset > 0
        new_step = torch.where(positive, plain, new_step).clamp_min(0)
        new_offset = new_offset.clamp_max(0)
    return (to_half(new_step), to_half(new_offset)) if half else (new_step, new_offset)


def pack_planes(values: torch.Tensor, bits: int, group_bytes: int) -> torch.Tensor:
    """ggml's bit planes: each run of group_bytes bytes holds 8 / bits runs of group_bytes values, the first run
    in the low bits. values: uint8 [..., n] -> [..., n * bits / 8]."""
    planes = 8 // bits
    grouped = values.reshape(*values.shape[:-1], -1, planes, group_bytes) & ((1 << bits) - 1)
    packed = grouped[..., 0, :].clone()
    for plane in range(1, planes):
        packed |= grouped[..., plane, :] << (plane * bits)
    return packed.reshape(*values.shape[:-1], -1)


def half_bytes(value: torch.Tensor) -> torch.Tensor:
    """float16 little-endian bytes of [rows, blocks] -> [rows, blocks, 2]."""
    return value.to(torch.float16).contiguous().view(torch.uint8).reshape(*value.shape, 2)


class BlockFormat:
    """One llama.cpp block type: its fit, its rounding on fixed parameters, its values and its bytes."""

    def __init__(self, name: str, block_length: int, sub_length: int, bytes_per_block: int, levels: Levels):
        self.name, self.levels = name, levels
        self.block_length, self.sub_length, self.bytes_per_block = block_length, sub_length, bytes_per_block

    def fit(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> BlockParams:
        """Block parameters with the least importance-weighted squared error for a [rows, k * block] tensor.

        importance: [k * block], e.g. llama.cpp's imatrix (each input column's mean squared activation).
        """
        rows, columns = self._check(weight)
        weights = self._column_weights(importance, columns, weight.device)
        shape = (-1, self.block_length // self.sub_length, self.sub_length)
        return self._fit(weight.float().reshape(rows, *shape), weights.view(shape))

    def round_columns(self, columns: torch.Tensor, params: BlockParams,
                      first_column: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, codes) of columns first_column.. of the tensor params describe, rounded on those params."""
        step, offset = self._column_grid(params, first_column, columns.shape[1])
        codes = self.levels.nearest(grid_position(columns.float(), step, offset))
        return grid_values(self.levels.of(codes), step, offset), codes

    def dequantize(self, codes: torch.Tensor, params: BlockParams) -> torch.Tensor:
        """float32 values, bit for bit what gguf-py's dequantize reads from pack(codes, params)."""
        step, offset = self._column_grid(params, 0, codes.shape[1])
        return grid_values(self.levels.of(codes), step, offset)

    def pack(self, codes: torch.Tensor, params: BlockParams) -> np.ndarray:
        """ggml's bytes, uint8 [rows, blocks * bytes_per_block]."""
        rows, columns = codes.shape
        blocks = codes.to(torch.uint8).reshape(rows, columns // self.block_length, self.block_length)
        packed = torch.cat(self._byte_fields(blocks, params), dim=-1)
        return packed.reshape(rows, -1).cpu().numpy()

    def _column_grid(self, params: BlockParams, first_column: int, count: int):
        """Per-column (step, offset) for columns first_column..first_column + count - 1."""
        first_sub, last_sub = first_column // self.sub_length, (first_column + count - 1) // self.sub_length
        subs_per_block = self.block_length // self.sub_length
        if first_column < 0 or last_sub >= params.d.shape[1] * subs_per_block:
            raise SlmError(f"columns {first_column}..{first_column + count - 1} lie outside the "
                           f"{params.d.shape[1] * self.block_length} columns these {self.name} parameters cover")
        step, offset = self._sub_grid(params, first_sub, last_sub + 1)
        start = first_column - first_sub * self.sub_length

        def per_column(value):
            return None if value is None else value.repeat_interleave(self.sub_length, 1)[:, start:start + count]
        return per_column(step), per_column(offset)

    def _check(self, weight: torch.Tensor) -> tuple[int, int]:
        if weight.dim() != 2 or weight.shape[1] == 0 or weight.shape[1] % self.block_length:
            raise SlmError(f"{self.name} stores rows in blocks of {self.block_length} values and this tensor is "
                           f"{list(weight.shape)}: give it a 32-value type (q4_0, q8_0, ...) or keep it in f16")
        if not torch.isfinite(weight).all():
            raise SlmError(f"a {list(weight.shape)} weight holds NaN or inf values, which {self.name} cannot store: "
                           "fix the model (a diverged training run?) before quantizing it")
        return weight.shape

    @staticmethod
    def _column_weights(importance: torch.Tensor | None, columns: int, device) -> torch.Tensor:
        if importance is None:
            return torch.ones(columns, device=device)
        if importance.shape != (columns,):
            raise SlmError(f"importance has shape {list(importance.shape)} for a tensor of {columns} columns: pass "
                           "one value per input column (its mean squared activation, as in an imatrix)")
        if not torch.isfinite(importance).all() or (importance < 0).any():
            raise SlmError("importance holds negative, NaN or inf values: pass each input column's mean squared "
                           "activation (finite, >= 0)")
        peak = importance.max()
        # A floor keeps groups whose columns all have zero importance well-defined (plain error decides there).
        return importance.float().clamp_min(peak * 1e-6) if peak > 0 else torch.ones(columns, device=device)

    def _fit(self, x: torch.Tensor, weights: torch.Tensor) -> BlockParams:
        """x [rows, blocks, subs, sub_length], weights [blocks, subs, sub_length]."""
        raise NotImplementedError

    def _sub_grid(self, params: BlockParams, first: int, stop: int):
        """(step, offset) [rows, stop - first] of sub-blocks first..stop-1, counted along the row."""
        raise NotImplementedError

    def _byte_fields(self, blocks: torch.Tensor, params: BlockParams) -> list[torch.Tensor]:
        """The block's fields in file order, uint8 [rows, blocks, bytes]; blocks: codes [rows, blocks, block]."""
        raise NotImplementedError
