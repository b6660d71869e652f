"""llama.cpp's block types, fitted with calibration and written exactly: FORMATS["q4_K"].fit(weight, imatrix).

Each row of a [rows, columns] weight is cut into blocks of 32 (q4_0, q4_1, q5_0, q5_1, q8_0, iq4_nl) or 256
values (the k-quants q2_K..q6_K, compress/kquants.py); a k-quant block is cut again into sub-blocks of 16 or 32
that share one step. A weight's value is `step * level + offset`:

- codes: uint8 [rows, columns], one per weight; code i stands for the type's i-th level, ascending (q4_0:
  -8..7, q4_1: 0..15, q8_0: -128..127, iq4_nl: its 16-value table, q3_K: -4..3, q6_K: -32..31, ...).
- BlockParams holds the rest as the file stores it: float16 d (and q4_1/q5_1's float16 m, or the k-quants'
  float16 dmin) per block; the k-quants' integer sub-block scales (and mins) per sub-block.
  step = d (32-value types) or d * scale; offset = m (q4_1, q5_1) or -(dmin * min) (q2_K, q4_K, q5_K).

Life cycle: `fit` chooses the parameters (importance-weighted least squares over the whole grid, sub-scale
quantization included); `round_columns` rounds any run of columns on fixed parameters (what GPTQ needs: it
fixes a block's parameters at its first column, then rounds column by column); `dequantize` gives exactly
the float32 values gguf-py (and llama.cpp) read back; `pack` writes ggml's bytes for those codes.
"""

from __future__ import annotations

import torch

from slmkit.compress.block_grid import BlockFormat, BlockParams, Levels, fit_scale, half_bytes, pack_planes
from slmkit.compress.kquants import K_QUANTS
from slmkit.errors import SlmError

# llama.cpp's iq4_nl levels (kvalues_iq4nl): denser near zero, where most weights lie.
IQ4_NL_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


class BlockOf32(BlockFormat):
    """A 32-value block: float16 d (and m), then the codes; with 5 bits the fifth bits come first, as a uint32."""

    def __init__(self, name: str, levels: Levels, bits: int, with_min: bool = False):
        bytes_per_block = 2 + 2 * with_min + 32 * bits // 8
        super().__init__(name, 32, 32, bytes_per_block, levels)
        self.bits, self.with_min = bits, with_min

    def _fit(self, x: torch.Tensor, weights: torch.Tensor) -> BlockParams:
        step, offset, _, _ = fit_scale(x, weights, self.levels, "free" if self.with_min else "none", half=True)
        return BlockParams(d=step.flatten(1).half(), m=offset.flatten(1).half() if self.with_min else None)

    def _sub_grid(self, params: BlockParams, first: int, stop: int):
        step = params.d[:, first:stop].float()
        return step, None if params.m is None else params.m[:, first:stop].float()

    def _byte_fields(self, blocks: torch.Tensor, params: BlockParams) -> list[torch.Tensor]:
        fields = [half_bytes(params.d)] + ([half_bytes(params.m)] if self.with_min else [])
        if self.bits == 8:  # int8 two's complement: level - 128
            return fields + [blocks ^ 0x80]
        if self.bits == 5:
            fields.append(pack_planes(blocks >> 4, 1, 1))
        return fields + [pack_planes(blocks, 4, 16)]


FORMATS: dict[str, BlockFormat] = {
    "q4_0": BlockOf32("q4_0", Levels(range(-8, 8)), 4),
    "q4_1": BlockOf32("q4_1", Levels(range(16)), 4, with_min=True),
    "q5_0": BlockOf32("q5_0", Levels(range(-16, 16)), 5),
    "q5_1": BlockOf32("q5_1", Levels(range(32)), 5, with_min=True),
    "q8_0": BlockOf32("q8_0", Levels(range(-128, 128)), 8),
    "iq4_nl": BlockOf32("iq4_nl", Levels(IQ4_NL_LEVELS), 4),
    **K_QUANTS,
}


def block_format(name: str) -> BlockFormat:
    """The format of a llama.cpp type by its lowercase name (q4_0 ... q6_K)."""
    if name not in FORMATS:
        raise SlmError(f"unknown block type {name!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[name]

