"""The layers one-shot methods rewrite, and their repeated blocks (the runtime reads them too)."""

from __future__ import annotations

import torch
from torch import nn

from slmkit.errors import SlmError


def is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 family) is a Linear with the weight stored transposed.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features], whatever the layer type stores."""
    weight = module.weight.data
    return weight.t() if type(module).__name__ == "Conv1D" else weight


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    matrix = matrix.t() if type(module).__name__ == "Conv1D" else matrix
    module.weight.data.copy_(matrix.to(module.weight.dtype))


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ModuleList of repeated blocks that hold Linear layers, outermost only, in model order.

    Found generically so any transformers family works: decoder `layers`, GPT-2's `h`,
    BERT's `encoder.layer`, and both of T5's stacks.
    """
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue
        if len({type(block) for block in module}) == 1 and any(is_linear(m) for m in module[0].modules()):
            found.append((name, module))
    if not found:
        raise SlmError(f"no repeated blocks with Linear layers found in {type(model).__name__}; "
                       "this model cannot be compressed block by block")
    return found


def linear_layers(block: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in block.named_modules() if is_linear(module)}
