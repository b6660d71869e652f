"""llama.cpp's k-quants (q2_K ... q6_K): 256-value blocks of 16 sub-blocks of 16 or 8 sub-blocks of 32 values.

Each sub-block's step is d * scale, an integer sub-scale under the block's float16 d; q2_K, q4_K and q5_K also
subtract dmin * min, an integer sub-min under a float16 dmin. The fit works in three passes: each sub-block's
own float step (and min) by fit_scale; those steps quantized to d x integers by the same search, weighted by
how much each sub-block's error grows with its step; then rounds that try the integers next to the nearest
ones on the exact grid (keeping, per sub-block, the least weighted error) and refit d (and dmin) by weighted
least squares over the whole block. llama.cpp's make_qkx3_quants / make_qp_quants taught the first two ideas.
"""

from __future__ import annotations

import torch

from slmkit.compress.block_grid import (BlockFormat, BlockParams, Levels, fit_scale, grid_position, grid_values,
                                        half_bytes, pack_planes, to_half, weighted_error)

REFINEMENTS = 3  # rounds of: refit d (and dmin), re-choose the sub-block integers
NEIGHBOURS = (-1, 0, 1)  # sub-scale (and sub-min) integers tried around the nearest one
FIT_ELEMENTS = 1 << 22  # weights fitted at once (rows at a time): bounds the memory of a large embedding


class KQuant(BlockFormat):
    """A k-quant: levels per weight, integer sub-scales (and sub-mins) per sub-block, float16 d (and dmin)."""

    def __init__(self, name: str, sub_length: int, bytes_per_block: int, levels: Levels, scale_levels: Levels,
                 min_levels: Levels | None, byte_fields):
        super().__init__(name, 256, sub_length, bytes_per_block, levels)
        self.scale_levels, self.min_levels, self.byte_fields = scale_levels, min_levels, byte_fields

    def _fit(self, x: torch.Tensor, weights: torch.Tensor) -> BlockParams:
        rows = max(1, FIT_ELEMENTS // x[0].numel())
        return BlockParams.concat([self._fit_rows(part, weights) for part in x.split(rows)], dim=0)

    def _fit_rows(self, x: torch.Tensor, weights: torch.Tensor) -> BlockParams:
        with_mins = self.min_levels is not None
        step, offset, level, _ = fit_scale(x, weights, self.levels, "nonpositive" if with_mins else "none", False)
        step = step[..., 0]
        # A sub-block's error grows with (its step's error)^2 x sum(w * level^2), with its min's by sum(w).
        d = fit_scale(step, (weights * level * level).sum(-1), self.scale_levels, "none", half=True)[0]
        dmin = target_min = None
        if with_mins:
            target_min = -offset[..., 0]
            dmin = fit_scale(target_min, weights.sum(-1).expand_as(target_min), self.min_levels, "none", True)[0]
        return self._refine(x, weights, step, target_min, d, dmin)

    def _refine(self, x, weights, target_step, target_min, d, dmin) -> BlockParams:
        """Alternate: best sub-block integers for (d, dmin), then least-squares (d, dmin) for those integers."""
        scales, mins, level, error = self._nearest_integers(x, weights, d, dmin, target_step, target_min)
        best = [d, dmin, scales, mins, error.sum(-1, keepdim=True)]
        for _ in range(REFINEMENTS):
            target_step = d * self.scale_levels.of(scales)
            target_min = None if mins is None else dmin * self.min_levels.of(mins)
            d, dmin = self._refit_block(x, weights, scales, mins, level, d, dmin)
            scales, mins, level, error = self._nearest_integers(x, weights, d, dmin, target_step, target_min)
            better = error.sum(-1, keepdim=True) < best[4]
            best = [None if old is None else torch.where(better, new, old)
                    for old, new in zip(best, [d, dmin, scales, mins, error.sum(-1, keepdim=True)])]
        d, dmin, scales, mins, _ = best
        return BlockParams(d=d[..., 0].half(), dmin=None if dmin is None else dmin[..., 0].half(),
                           scales=self.scale_levels.of(scales).to(torch.int8),
                           mins=None if mins is None else self.min_levels.of(mins).to(torch.int8))

    def _nearest_integers(self, x, weights, d, dmin, target_step, target_min):
        """Per sub-block, the (scale, min) codes near target / d with the least weighted error on the exact grid."""
        scale_base = self.scale_levels.nearest(grid_position(target_step, d, None)).short()
        min_base = None if dmin is None else self.min_levels.nearest(grid_position(target_min, dmin, None)).short()
        best = None
        for scale_shift in NEIGHBOURS:
            for min_shift in NEIGHBOURS if dmin is not None else (0,):
                scales = (scale_base + scale_shift).clamp_(0, self.scale_levels.count - 1).to(torch.uint8)
                step = d * self.scale_levels.of(scales)
                mins = offset = None
                if dmin is not None:
                    mins = (min_base + min_shift).clamp_(0, self.min_levels.count - 1).to(torch.uint8)
                    offset = -(dmin * self.min_levels.of(mins)).unsqueeze(-1)
                level = self.levels.round(grid_position(x, step.unsqueeze(-1), offset))
                error = weighted_error(x, grid_values(level, step.unsqueeze(-1), offset), weights)
                if best is None:
                    best = [scales, mins, level, error]
                    continue
                better = error < best[3]
                best = [None if old is None else torch.where(mask, new, old) for old, new, mask in
                        zip(best, [scales, mins, level, error], [better, better, better.unsqueeze(-1), better])]
        return best

    def _refit_block(self, x, weights, scales, mins, level, d, dmin):
        """Weighted least-squares (d, dmin >= 0) over the block for fixed integers and levels, as float16 values."""
        def block_sum(value):
            return value.sum(dim=(-2, -1)).unsqueeze(-1)

        unit = self.scale_levels.of(scales).unsqueeze(-1) * level  # the value per unit of d
        weighted_unit = weights * unit
        sum_uu, sum_ux = block_sum(weighted_unit * unit), block_sum(weighted_unit * x)
        plain = torch.where(sum_uu > 0, sum_ux / sum_uu, d)
        if mins is None:
            return to_half(plain), None
        level_min = self.min_levels.of(mins).unsqueeze(-1)  # the value subtracted per unit of dmin
        sum_vv, sum_uv = block_sum(weights * level_min * level_min), block_sum(weighted_unit * level_min)
        sum_vx = block_sum(weights * level_min * x)
        det = sum_uu * sum_vv - sum_uv * sum_uv
        solvable = det > 1e-6 * sum_uu * sum_vv
        det = torch.where(solvable, det, 1)
        new_d = torch.where(solvable, (sum_ux * sum_vv - sum_vx * sum_uv) / det, d)
        new_dmin = torch.where(solvable, (sum_ux * sum_uv - sum_vx * sum_uu) / det, dmin)
        negative = new_dmin < 0
        new_d = torch.where(negative, plain, new_d).clamp_min(0)
        return to_half(new_d), to_half(new_dmin.clamp_min(0))

    def _sub_grid(self, params: BlockParams, first: int, stop: int):
        block = torch.arange(first, stop, device=params.d.device) // (self.block_length // self.sub_length)
        step = params.d.float()[:, block] * params.scales.flatten(1)[:, first:stop].float()
        if params.dmin is None:
            return step, None
        return step, -(params.dmin.float()[:, block] * params.mins.flatten(1)[:, first:stop].float())

    def _byte_fields(self, blocks: torch.Tensor, params: BlockParams) -> list[torch.Tensor]:
        return self.byte_fields(blocks, params)


def _q2_k_fields(blocks, params):
    scales = params.scales.to(torch.uint8) | (params.mins.to(torch.uint8) << 4)
    return [scales, pack_planes(blocks, 2, 32), half_bytes(params.d), half_bytes(params.dmin)]


def _q3_k_fields(blocks, params):
    stored = (params.scales.short() + 32).to(torch.uint8)  # 6 bits: low nibbles, then the high 2 bits
    return [pack_planes(blocks >> 2, 1, 32), pack_planes(blocks, 2, 32), pack_planes(stored, 4, 8),
            pack_planes(stored >> 4, 2, 4), half_bytes(params.d)]


def _six_bit_scales_and_mins(params):
    """q4_K / q5_K's 12 bytes: sub-blocks 0-3 in the low 6 bits, 4-7 split over high bits and a last nibble row."""
    scales, mins = params.scales.to(torch.uint8), params.mins.to(torch.uint8)
    return torch.cat([scales[..., :4] | ((scales[..., 4:] >> 4) << 6), mins[..., :4] | ((mins[..., 4:] >> 4) << 6),
                      (scales[..., 4:] & 15) | ((mins[..., 4:] & 15) << 4)], dim=-1)


def _q4_k_fields(blocks, params):
    return [half_bytes(params.d), half_bytes(params.dmin), _six_bit_scales_and_mins(params),
            pack_planes(blocks, 4, 32)]


def _q5_k_fields(blocks, params):
    return [half_bytes(params.d), half_bytes(params.dmin), _six_bit_scales_and_mins(params),
            pack_planes(blocks >> 4, 1, 32), pack_planes(blocks, 4, 32)]


def _q6_k_fields(blocks, params):
    scales = params.scales.to(torch.int8).contiguous().view(torch.uint8)
    return [pack_planes(blocks, 4, 64), pack_planes(blocks >> 4, 2, 32), scales, half_bytes(params.d)]


K_QUANTS = {
    "q2_K": KQuant("q2_K", 16, 84, Levels(range(4)), Levels(range(16)), Levels(range(16)), _q2_k_fields),
    "q3_K": KQuant("q3_K", 16, 110, Levels(range(-4, 4)), Levels(range(-32, 32)), None, _q3_k_fields),
    "q4_K": KQuant("q4_K", 32, 144, Levels(range(16)), Levels(range(64)), Levels(range(64)), _q4_k_fields),
    "q5_K": KQuant("q5_K", 32, 176, Levels(range(32)), Levels(range(64)), Levels(range(64)), _q5_k_fields),
    "q6_K": KQuant("q6_K", 16, 210, Levels(range(-32, 32)), Levels(range(-128, 128)), None, _q6_k_fields),
}
