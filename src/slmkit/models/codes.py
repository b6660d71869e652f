"""The integer codes of a checkpoint quantized on a symmetric grid, read back: the scales its safetensors store and
the codes its float weights sit on. The GGUF export keeps them bit for bit and the int8 runtime reuses them, so a
calibrated checkpoint is not rounded a second time."""

from __future__ import annotations

from pathlib import Path

import torch

ROUNDING_CHUNK_ELEMENTS = 1 << 21  # float temporaries per chunk of rows: 8 MB, not an LM head's 100+ MB each


def row_chunks(weight: torch.Tensor) -> list[tuple[int, int]]:
    """Row ranges of `weight` small enough that rounding one costs little memory: converting a loaded model
    must not need much more than the float model itself (peak RAM is what `slm bench` reports)."""
    rows = max(1, ROUNDING_CHUNK_ELEMENTS // weight.shape[1])
    return [(start, min(start + rows, weight.shape[0])) for start in range(0, weight.shape[0], rows)]


def recover_codes(weight: torch.Tensor, scale: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor | None:
    """The int8 codes c of a symmetric grid with c x scale == weight, or None when a weight is off the grid
    or its code is outside -128..127 (8 bits or fewer).

    A calibrated checkpoint loads as float weights; these codes let a consumer keep its values instead of
    rounding them a second time. scale: [rows, groups], each group covering columns / groups consecutive
    columns (1 group: one scale per output channel); a zero scale holds only zero weights (code 0).
    tolerance: how far from c x scale a weight may lie, as a fraction of its scale; 0 asks for the exact values.
    """
    scale = scale.float().reshape(weight.shape[0], -1, 1)
    divisor = torch.where(scale == 0, 1, scale)
    codes = torch.empty(weight.shape, dtype=torch.int8)
    for start, end in row_chunks(weight):
        rows = weight[start:end].float().unflatten(1, (scale.shape[1], -1))
        rounded = torch.div(rows, divisor[start:end]).round_()
        if not bool(((rounded >= -128) & (rounded <= 127)).all()):
            return None
        codes[start:end] = rounded.flatten(1)
        row_scale = scale[start:end]
        if bool((rounded.mul_(row_scale).sub_(rows).abs_() > tolerance * row_scale.abs()).any()):
            return None
    return codes


def stored_weight_scales(directory: Path | None) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Module name -> (weight_scale, weight_zero_point or None) as a quantized checkpoint's safetensors files
    store them (compressed-tensors' names); {} for a checkpoint of plain float weights, or no directory."""
    if directory is None or not Path(directory).is_dir():
        return {}
    from safetensors import safe_open

    found = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(file, "pt") as tensors:
            keys = set(tensors.keys())
            for key in keys:
                if key.endswith(".weight_scale"):
                    module = key.removesuffix(".weight_scale")
                    zero_point = f"{module}.weight_zero_point"
                    found[module] = (tensors.get_tensor(key),
                                     tensors.get_tensor(zero_point) if zero_point in keys else None)
    return found
