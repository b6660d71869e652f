"""Integer grids for weight quantization, per group of input columns.

Symmetric: scale = the group's signed extreme / -2^(b-1), so the extreme lands
exactly on the lowest level and all 2^b levels are usable (the q4_0 / q8 grid
llama.cpp uses for 4-bit; a plain absmax / (2^(b-1) - 1) wastes a level).
Zero stays exactly zero, so pruned weights survive quantization.
Asymmetric: an integer zero point over [min(w, 0), max(w, 0)], 0 again exact.
With float16 scales (what GGUF's q4_0/q8_0 blocks store) a checkpoint's codes and
scales map onto GGUF blocks bit for bit.
"""

from __future__ import annotations

import torch


def group_params(weight: torch.Tensor, bits: int, symmetric: bool,
                 float16_scales: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point), each [rows, 1], for a [rows, group] slice."""
    if symmetric:
        index = weight.abs().argmax(dim=1, keepdim=True)
        scale = weight.gather(1, index) / -(2 ** (bits - 1))
        if float16_scales:
            scale = scale.half().float()
        zero = torch.zeros_like(scale)
    else:
        low = weight.min(dim=1, keepdim=True).values.clamp(max=0)
        high = weight.max(dim=1, keepdim=True).values.clamp(min=0)
        scale = (high - low) / (2**bits - 1)
        if float16_scales:
            scale = scale.half().float()
        zero = torch.round(-low / torch.where(scale == 0, 1, scale))
    return torch.where(scale == 0, torch.ones_like(scale), scale), zero


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   symmetric: bool) -> torch.Tensor:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    return torch.clamp(torch.round(weight / scale) + zero, low, high)


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                  symmetric: bool) -> torch.Tensor:
    """The float values the integer codes stand for."""
    return (quantize_codes(weight, scale, zero, bits, symmetric) - zero) * scale
