"""llama.cpp block grids that train: a weight read through its block type with trainable block parameters, for
quantization-aware training (distillation/qat.py: q4_0's grid; distillation/plan_qat.py: a GGUF plan's).

The forward gives values a block of that type holds: every parameter rounded as the file stores it (float16 d,
m and dmin; a k-quant's integer sub-block scales and mins), every weight rounded to its nearest level (iq4_nl:
of its table). Roundings pass the gradient straight through (STE), the clamps to a range do not; a step's and an
offset's gradients are taken with the levels held (d value / d step = level, as EfficientQAT trains step sizes).

A k-quant trains each sub-block's step (and min) as a float, and its super-block's d (and dmin); the forward
rounds d to float16 and each sub-block's step to the nearest integer in the type's range times d, straight
through, as the file stores them (the format's fit works in the same two stages: a float step per sub-block,
then its integer; compress/kquants.py). At the end `snapped` gives the exact BlockParams and the values
`block_format(type).dequantize` reads back, which `slm export` packs bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from slmkit.compress.block_grid import BlockParams, Levels
from slmkit.compress.blocks import block_format
from slmkit.compress.kquants import KQuant

# Adam moves a parameter by about the learning rate a step, whatever its size. Each trainable step is kept in
# units where that moves a block's farthest value by the same share of its mean level gap as it moves q4_0's
# (whose trainable step is its d itself: its farthest level, -8, times its 15 gaps), so one learning rate suits
# every type: a finer grid's step moves more slowly (q8_0's 16 times more than a 4-bit grid's over the same
# range). Measured on a tiny llama, 16 steps at the default rate: every type's held-out KL fell (to 0.73-0.93 of
# the start's); with each step as a 4-bit grid's over the same range, q8_0's and q6_K's rose. Offsets (m, a
# k-quant's mins) stay in the weights' own units: in such gap units, q4_1's, q4_K's and q2_K's KL fell less, or
# rose at twice the rate.
Q4_0_REACH = 8 * 15


def straight_through_round(values: torch.Tensor) -> torch.Tensor:
    """round(values) forward, the identity backward."""
    return values + (values.round() - values).detach()


def straight_through_float16(values: torch.Tensor) -> torch.Tensor:
    """values rounded to float16 (as a block stores d, m and dmin) forward, the identity backward."""
    return values + (values.half().float() - values).detach()


def straight_through_levels(position: torch.Tensor, levels: Levels) -> torch.Tensor:
    """The nearest of `levels` forward; backward the identity where the position rounds to a level of the range,
    nothing beyond it (the clamp)."""
    if levels.uniform:
        return straight_through_round(position).clamp(levels.low, levels.high)
    held = position.detach()
    inside = (held >= levels.low - levels.low_gap / 2) & (held <= levels.high + levels.high_gap / 2)
    return levels.round(held) + torch.where(inside, position - held, 0.0)


def _over(values: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """values / step with the step held; a zero step puts every value at zero (block_grid.grid_position)."""
    held = step.detach()
    return values / torch.where(held == 0, torch.inf, held)


def grid_values(weight: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, levels: Levels,
                sub_length: int) -> torch.Tensor:
    """step * nearest level + offset for a [rows, columns] weight and per-sub-block step and offset ([rows,
    columns / sub_length] each; offset None: none), computed as block_grid.BlockFormat.round_columns does."""
    rows, columns = weight.shape
    subs = weight.reshape(rows, columns // sub_length, sub_length)
    step = step.unsqueeze(-1)
    shifted = subs if offset is None else subs - offset.detach().unsqueeze(-1)
    values = straight_through_levels(_over(shifted, step), levels) * step
    return (values if offset is None else values + offset.unsqueeze(-1)).reshape(rows, columns)


class TrainableGrid(nn.Module):
    """One matrix's block parameters at a llama.cpp type, trainable; `forward(weight)` reads a [rows, columns]
    weight ([columns, rows] with `transposed`, GPT-2's Conv1D) through the grid. Built from the BlockParams a
    one-shot fit stored, it starts on exactly their grid."""

    def __init__(self, type_name: str, params: BlockParams, *, transposed: bool = False):
        super().__init__()
        self.type_name, self.transposed = type_name, transposed
        self.block = block_format(type_name)
        levels = self.block.levels  # the farthest from level 0 (where a value is its offset) times the gaps
        self.unit = max(-levels.low, levels.high) * (levels.count - 1) / Q4_0_REACH
        d = params.d.float()
        if isinstance(self.block, KQuant):
            self.top_scale = max(-self.block.scale_levels.low, self.block.scale_levels.high)
            # the largest step the super-block holds, and each sub-block's
            self.block_step = nn.Parameter(d * (self.top_scale * self.unit))
            self.sub_step = nn.Parameter(d.unsqueeze(-1) * params.scales.float() * self.unit)
            if params.dmin is not None:
                self.top_min = self.block.min_levels.high
                self.block_min = nn.Parameter(params.dmin.float() * self.top_min)
                self.sub_min = nn.Parameter(params.dmin.float().unsqueeze(-1) * params.mins.float())
        else:
            self.step = nn.Parameter(d * self.unit)
            self.offset = None if params.m is None else nn.Parameter(params.m.float())

    def stored(self) -> dict[str, torch.Tensor | None]:
        """The parameters as the file stores them (float32 values; STE: gradients reach the trained ones)."""
        if not isinstance(self.block, KQuant):
            return {"d": straight_through_float16(self.step / self.unit),
                    "m": None if self.offset is None else straight_through_float16(self.offset)}
        d = straight_through_float16(self.block_step / (self.top_scale * self.unit))
        scales = straight_through_levels(_over(self.sub_step / self.unit, d.unsqueeze(-1)), self.block.scale_levels)
        if self.block.min_levels is None:
            return {"d": d, "scales": scales}
        dmin = straight_through_float16(self.block_min / self.top_min)
        mins = straight_through_levels(_over(self.sub_min, dmin.unsqueeze(-1)), self.block.min_levels)
        return {"d": d, "scales": scales, "dmin": dmin, "mins": mins}

    def sub_grid(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each sub-block's (step, offset) [rows, sub-blocks], in the float32 operations the file's readers use."""
        stored = self.stored()
        if "scales" not in stored:
            return stored["d"], stored["m"]
        step = (stored["d"].unsqueeze(-1) * stored["scales"]).flatten(1)
        return step, None if "mins" not in stored else -(stored["dmin"].unsqueeze(-1) * stored["mins"]).flatten(1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.t() if self.transposed else weight
        values = grid_values(matrix, *self.sub_grid(), self.block.levels, self.block.sub_length)
        return values.t() if self.transposed else values

    @torch.no_grad()
    def snapped(self, weight: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
        """The weight's values on the trained grid, exactly as the file reads them back, and its BlockParams."""
        stored = {name: value.cpu() for name, value in self.stored().items() if value is not None}
        params = BlockParams(**{name: value.to(torch.int8 if name in ("scales", "mins") else torch.float16)
                                for name, value in stored.items()})
        matrix = (weight.t() if self.transposed else weight).detach().float().cpu()
        _, codes = self.block.round_columns(matrix, params, 0)
        values = self.block.dequantize(codes, params)
        return (values.t() if self.transposed else values), params
