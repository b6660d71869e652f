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


OBSERVERS = ("minmax", "mse")
# Ranges the mse observer tries, as fractions of the full min-max range (llm-compressor's MSE
# observer and llama.cpp's k-quant search shrink the range the same way).
SHRINK_FACTORS = torch.linspace(1.0, 0.7, 31).tolist()
MSE_SEARCH_ELEMENTS = 1 << 22  # candidates x rows x group held at once by the mse search


def group_params(weight: torch.Tensor, bits: int, symmetric: bool, float16_scales: bool = False,
                 observer: str = "minmax", importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point), each [rows, 1], for a [rows, group] slice.

    observer "minmax" spans the group's full range; "mse" tries shrunken ranges (clipping
    the outliers) and keeps, per row, the one with the least squared error, each column's
    error weighted by `importance` ([group]; e.g. GPTQ's 1 / [H^-1]_jj^2) when given.
    """
    if observer == "minmax":
        return _range_params(weight, bits, symmetric, float16_scales, 1.0)
    if observer != "mse":
        raise ValueError(f"unknown observer {observer!r}; use one of {', '.join(OBSERVERS)}")
    # All candidate ranges at once ([factors, rows, group]), a slice of rows at a time to bound memory.
    factors = torch.tensor(SHRINK_FACTORS, device=weight.device).view(-1, 1, 1)
    rows_per_slice = max(1, MSE_SEARCH_ELEMENTS // (len(SHRINK_FACTORS) * weight.shape[1]))
    scales, zeros = [], []
    for rows in weight.split(rows_per_slice):
        scale, zero = _range_params(rows.unsqueeze(0), bits, symmetric, float16_scales, factors)
        error = (fake_quantize(rows, scale, zero, bits, symmetric) - rows).pow_(2)
        error = (error * importance if importance is not None else error).sum(dim=-1, keepdim=True)
        best = error.argmin(dim=0, keepdim=True)  # [1, rows, 1]
        scales.append(scale.gather(0, best)[0])
        zeros.append(zero.gather(0, best)[0])
    return torch.cat(scales), torch.cat(zeros)


def _range_params(weight: torch.Tensor, bits: int, symmetric: bool, float16_scales: bool,
                  factor: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point spanning `factor` x the range of each row (along the last dim)."""
    if symmetric:
        index = weight.abs().argmax(dim=-1, keepdim=True)
        scale = weight.gather(-1, index) * (factor / -(2 ** (bits - 1)))
        if float16_scales:
            scale = scale.half().float()
        zero = torch.zeros_like(scale)
    else:
        low = weight.min(dim=-1, keepdim=True).values.clamp(max=0) * factor
        high = weight.max(dim=-1, keepdim=True).values.clamp(min=0) * factor
        scale = (high - low) / (2**bits - 1)
        if float16_scales:
            scale = scale.half().float()
        zero = torch.round(-low / torch.where(scale == 0, 1, scale))
    return torch.where(scale == 0, torch.ones_like(scale), scale), zero


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   symmetric: bool) -> torch.Tensor:
    # In place after the first op: each pass over a whole model's weights costs ~0.1 s on a CPU.
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    codes = torch.div(weight, scale).round_()
    if not symmetric:  # the symmetric zero point is 0
        codes.add_(zero)
    return codes.clamp_(low, high)


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                  symmetric: bool) -> torch.Tensor:
    """The float values the integer codes stand for."""
    codes = quantize_codes(weight, scale, zero, bits, symmetric)
    if not symmetric:
        codes.sub_(zero)
    return codes.mul_(scale)
