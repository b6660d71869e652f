"""Saved formats for quantized checkpoints.

compressed-tensors ("pack-quantized") is what llm-compressor writes and what
transformers and vLLM load: int4/int8 codes packed into int32, a scale (and a
zero point when asymmetric) per group. We hand the library our own scales and
zero points, so the packed codes are exactly the ones our method chose.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slmkit.compress.quantize import QuantConfig
from slmkit.errors import SlmError


def check_compressed_tensors(config: QuantConfig) -> None:
    """Refuse up front what cannot be saved, before any slow work."""
    if not config.symmetric:
        # compressed-tensors 0.20 packs asymmetric zero points along rows, and transformers 5.x then
        # refuses the checkpoint on load (shape mismatch): refuse rather than write one nobody can read.
        raise SlmError("asymmetric (--asym) checkpoints cannot be saved as compressed-tensors yet; "
                       "use --sym or --fake-quant")


def prepare_compressed_tensors(model, config: QuantConfig, params: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """Pack the model's quantized layers in place; returns a callback that writes the config into a saved dir."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 QuantizationStatus, apply_quantization_config)

    check_compressed_tensors(config)
    modules = dict(model.named_modules())
    not_linear = [name for name in params if not isinstance(modules[name], torch.nn.Linear)]
    if not_linear:
        raise SlmError(f"compressed-tensors stores nn.Linear layers only; {not_linear[0]} is a "
                       f"{type(modules[not_linear[0]]).__name__} (GPT-2 style): save with --fake-quant instead")
    weights = QuantizationArgs(num_bits=config.bits, type="int", symmetric=config.symmetric,
                               strategy="group" if config.group_size else "channel",
                               group_size=config.group_size or None)
    scheme = QuantizationScheme(targets=sorted(params), weights=weights)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}), show_progress=False)
    for name, (scale, _) in params.items():
        layer = modules[name]
        # q4_0-style scales may be negative (the signed extreme maps to -8); codes * scale is still exact.
        layer.weight_scale.data.copy_(scale.to(layer.weight_scale.dtype))
        layer.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)

    def write_config(directory: Path) -> None:
        compressor.update_config(str(directory))

    return write_config
