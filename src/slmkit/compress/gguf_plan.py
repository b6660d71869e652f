"""A GGUF plan as a checkpoint keeps it: the block type each weight matrix was quantized to, and the block
parameters it was rounded on, so `slm export` packs the calibrated values bit for bit without re-rounding.

- `gguf-plan.json`: {"tensors": {parameter name: {"type", "bytes", "predicted_kl"}}, and the plan's totals: the
  file's bytes, the predicted KL, the types; after QAT (distillation/plan_qat.py) the held-out KL measured before
  and after it, kl_before_qat and kl_after_qat};
- `gguf-blocks.safetensors`: each planned matrix's BlockParams, as `<parameter name>.<field>` tensors.

The weights themselves stay in the checkpoint's own file, on their grids; a reader recovers the codes with
`round_columns(weight, params, 0)` and checks that they give the weight back exactly (the matrix may have been
trained since).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slmkit.compress.block_grid import BlockParams
from slmkit.compress.blocks import block_format
from slmkit.errors import SlmError

PLAN_FILE = "gguf-plan.json"
PARAMS_FILE = "gguf-blocks.safetensors"


@dataclass(frozen=True)
class PlannedTensor:
    """A matrix's block type and what the plan predicted for it."""

    type: str
    bytes: int
    predicted_kl: float


def write_plan(directory: Path, planned: dict[str, PlannedTensor], params: dict[str, BlockParams],
               summary: dict) -> None:
    """Write the plan files into a checkpoint directory being made (models.checkpoint.save's after_write)."""
    tensors = {}
    for name, block_params in params.items():
        for field in fields(BlockParams):
            value = getattr(block_params, field.name)
            if value is not None:
                tensors[f"{name}.{field.name}"] = value.contiguous().cpu()
    save_file(tensors, str(directory / PARAMS_FILE))
    record = {**summary, "tensors": {name: vars(tensor) for name, tensor in planned.items()}}
    (directory / PLAN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_plan(directory: str | Path | None) -> tuple[dict[str, PlannedTensor], dict[str, BlockParams]] | None:
    """A checkpoint's plan and block parameters, or None when it has no plan."""
    if directory is None or not (Path(directory) / PLAN_FILE).is_file():
        return None
    directory = Path(directory)
    try:
        record = json.loads((directory / PLAN_FILE).read_text())
        planned = {name: PlannedTensor(**entry) for name, entry in record["tensors"].items()}
        stored = load_file(str(directory / PARAMS_FILE))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SlmError(f"{directory}: its GGUF plan ({PLAN_FILE}, {PARAMS_FILE}) cannot be read: {exc}") from exc
    params = {}
    for name, tensor in planned.items():
        block_format(tensor.type)  # an unknown type is refused here, not at export
        values = {field.name: stored.get(f"{name}.{field.name}") for field in fields(BlockParams)}
        if values["d"] is None:
            raise SlmError(f"{directory}: {PARAMS_FILE} lacks the block parameters of {name}")
        params[name] = BlockParams(**values)
    return planned, params


def read_plan_summary(directory: str | Path) -> dict:
    """The totals a checkpoint's plan records beside its tensors (write_plan's `summary`)."""
    path = Path(directory) / PLAN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SlmError(f"{path} cannot be read: {exc}") from exc
    return {key: value for key, value in record.items() if key != "tensors"}


def exact_codes(weight: torch.Tensor, type_name: str, params: BlockParams) -> torch.Tensor | None:
    """The codes of a [rows, columns] weight on its planned grid, or None when the weight is no longer exactly on
    it (changed since it was quantized)."""
    block = block_format(type_name)
    if weight.dim() != 2 or params.d.shape != (weight.shape[0], weight.shape[1] // block.block_length):
        return None  # parameters for another shape
    values, codes = block.round_columns(weight, params, 0)
    return codes if torch.equal(values, weight.float()) else None
