"""Quantize a model to a mix of llama.cpp block types chosen per weight matrix under a budget.

1. `candidates`: for each matrix (every linear layer, the embedding, the output head) and each block type its
   rows can take, the bytes it would take in the file and the KL divergence its rounding is predicted to add
   (compress/sensitivity.py), estimated on a sample of the rows: a fit per type per matrix on the whole model
   would take minutes on a laptop's CPU.
2. `plan_types`: the type per matrix with the least predicted KL within a byte budget, or the fewest bytes within
   a KL budget (compress/plan.py).
3. `quantize_planned`: each matrix rounded on its type's exact grid (block_grid's importance-weighted fit), by
   GPTQ (the linear layers inside the blocks, error compensated column by column, each format block's parameters
   fitted where GPTQ reaches its first column) or RTN; returns the block parameters `slm export` packs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from slmkit.compress.block_grid import BlockParams
from slmkit.compress.blocks import FORMATS, block_format
from slmkit.compress.gguf_plan import PlannedTensor
from slmkit.compress.obs import Hessians, inverse_hessian_factor, obs_sweep
from slmkit.compress.plan import Candidate, choose, smallest_within
from slmkit.compress.runner import run_sequential
from slmkit.compress.sensitivity import Sensitivity
from slmkit.errors import SlmError
from slmkit.models.layers import set_weight_matrix, weight_matrix

GGUF_ALIGNMENT = 32  # GGUF pads every tensor's data to this many bytes
PLAN_TYPES = tuple(FORMATS)  # every block type llama.cpp reads that blocks.py writes
SAMPLED_ROWS = 512  # rows a candidate's error is estimated on (a matrix with more is sampled evenly)
GPTQ_DAMP = 0.01


@dataclass
class GGUFPlanConfig:
    """A GGUF file's block type per weight matrix, chosen under a budget, each matrix then rounded on its grid.

    Args:
        method: "gptq" (the linear layers' rounding error compensated on calibration data) or "rtn".
        size: the whole file's bytes at most; or `bpw`: bits per model weight (the file's bits over the
            model's parameters, as llama.cpp reports it); or `max_kl`: the fewest bytes whose predicted mean KL
            divergence per token from the float model stays within it. Exactly one.
        types: the block types it may choose from.
        sensitivity_samples: calibration sequences the sensitivity is measured on (a forward and a backward
            pass each).
        imatrix_out: also write those sequences' input statistics as llama.cpp's imatrix GGUF here.
    """

    method_name: ClassVar[str] = "gguf-plan"
    method: str = "gptq"
    size: int | None = None
    bpw: float | None = None
    max_kl: float | None = None
    types: tuple[str, ...] = PLAN_TYPES
    sensitivity_samples: int = 8
    imatrix_out: str | None = None

    def __post_init__(self):
        budgets = [name for name in ("size", "bpw", "max_kl") if getattr(self, name) is not None]
        if len(budgets) != 1:
            raise SlmError("a GGUF plan needs one budget: --size (bytes of the file), --bpw (bits per weight) or "
                           f"--max-kl (predicted KL per token); got {', '.join(budgets) or 'none'}")
        if self.method not in ("gptq", "rtn"):
            raise SlmError(f"--method {self.method} cannot fill a GGUF plan; use gptq or rtn")
        for name in ("size", "bpw", "max_kl"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise SlmError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for type_name in self.types:
            block_format(type_name)
        if self.sensitivity_samples < 1:
            raise SlmError(f"sensitivity_samples must be positive, got {self.sensitivity_samples}")

    def to_dict(self) -> dict:
        return {"method": self.method_name, **asdict(self), "types": list(self.types)}


def tensor_bytes(type_name: str, shape: tuple[int, int]) -> int:
    """A [rows, columns] matrix's bytes in a GGUF file at `type_name`, alignment padding included."""
    block = block_format(type_name)
    raw = shape[0] * shape[1] // block.block_length * block.bytes_per_block
    return math.ceil(raw / GGUF_ALIGNMENT) * GGUF_ALIGNMENT


def types_for(columns: int, types: tuple[str, ...]) -> list[str]:
    """The types whose blocks fit a row of `columns` values (k-quants need multiples of 256)."""
    return [name for name in types if columns % FORMATS[name].block_length == 0]


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """The module that holds each weight matrix, by parameter name (weight_matrix reads it as [out, in])."""
    return {f"{name}.weight": module for name, module in model.named_modules()
            if isinstance(getattr(module, "weight", None), torch.Tensor)}


def matrices(model: nn.Module, sensitivity: dict[str, Sensitivity]) -> dict[str, torch.Tensor]:
    """Each measured weight matrix as [out, in] (weight_matrix's orientation), by parameter name."""
    owners = _owners(model)
    return {name: weight_matrix(owners[name]) for name in sensitivity}


@torch.no_grad()
def candidates(model: nn.Module, sensitivity: dict[str, Sensitivity], types: tuple[str, ...],
               progress=None) -> dict[str, list[Candidate]]:
    """Per matrix, each type it can take with its bytes and predicted KL."""
    found = {}
    weights = matrices(model, sensitivity)
    for done, (name, weight) in enumerate(weights.items(), 1):
        usable = types_for(weight.shape[1], types)
        if not usable:
            raise SlmError(f"{name} has rows of {weight.shape[1]} values: none of {', '.join(types)} can hold it")
        rows = _sampled_rows(weight.shape[0])
        sample = weight[rows].float()
        found[name] = [Candidate(type_name, tensor_bytes(type_name, tuple(weight.shape)),
                                 _predicted_kl(sensitivity[name], sample, rows, type_name))
                       for type_name in usable]
        if progress:
            progress(done, len(weights))
    return found


def _sampled_rows(rows: int) -> torch.Tensor:
    return torch.arange(rows) if rows <= SAMPLED_ROWS else torch.linspace(0, rows - 1, SAMPLED_ROWS).long()


def _predicted_kl(sensitivity: Sensitivity, sample: torch.Tensor, rows: torch.Tensor, type_name: str) -> float:
    """The sampled rows' predicted KL (sensitivity.py's sum), each use scaled to the whole matrix by the sampled
    rows' share of its row weights."""
    block = block_format(type_name)
    values, _ = block.round_columns(sample, block.fit(sample, sensitivity.importance), 0)
    squared = (values - sample).pow(2)
    total = 0.0
    for use in sensitivity.uses:
        sampled = use.rows[rows]
        scale = float(use.rows.sum() / sampled.sum()) if sampled.sum() > 0 else 1.0
        total += 0.5 * float(sampled @ squared @ use.columns) * scale
    return total


def plan_types(found: dict[str, list[Candidate]], *, budget: int | None = None,
               max_kl: float | None = None) -> dict[str, PlannedTensor]:
    """The type per matrix: the least predicted KL within `budget` bytes, or the fewest bytes within `max_kl`."""
    chosen = choose(found, budget) if budget is not None else smallest_within(found, max_kl)
    return {name: PlannedTensor(choice.type, choice.bytes, choice.loss) for name, choice in chosen.items()}


def quantize_planned(model: nn.Module, planned: dict[str, PlannedTensor], sensitivity: dict[str, Sensitivity],
                     ids: torch.Tensor | None, *, gptq: bool, device=None, progress=None) -> dict[str, BlockParams]:
    """Round every planned matrix onto its type's grid in place; its block parameters by parameter name."""
    quantizer = PlannedGPTQ(planned) if gptq else PlannedRTN(planned, sensitivity)
    run_sequential(model, quantizer, ids if gptq else None, progress=progress, device=device)
    owners = _owners(model)
    for name in planned.keys() - quantizer.params.keys():  # outside the blocks: the embedding and the head
        module = owners[name]
        values, quantizer.params[name] = _rounded(weight_matrix(module), planned[name].type,
                                                  sensitivity[name].importance)
        set_weight_matrix(module, values)
    return quantizer.params


def _rounded(weight: torch.Tensor, type_name: str, importance) -> tuple[torch.Tensor, BlockParams]:
    block = block_format(type_name)
    params = block.fit(weight.float(), importance)
    values, _ = block.round_columns(weight.float(), params, 0)
    return values, params


class PlannedRTN:
    """Each block layer rounded on its planned grid, fitted with its measured input importance."""

    needs_calibration = False

    def __init__(self, planned: dict[str, PlannedTensor], sensitivity: dict[str, Sensitivity]):
        self.planned, self.sensitivity = planned, sensitivity
        self.params: dict[str, BlockParams] = {}

    def apply(self, name: str, module) -> dict:
        key = f"{name}.weight"
        values, self.params[key] = _rounded(weight_matrix(module), self.planned[key].type,
                                            self.sensitivity[key].importance)
        set_weight_matrix(module, values)
        return {"type": self.planned[key].type}


class PlannedGPTQ:
    """GPTQ on each block layer's planned grid: a format block's parameters are fitted on the error-updated
    weights when the sweep reaches its first column, weighted as GPTQ charges each column's error."""

    needs_calibration = True
    parallel_apply = True

    def __init__(self, planned: dict[str, PlannedTensor]):
        self.planned, self.hessians = planned, Hessians()
        self.params: dict[str, BlockParams] = {}

    def observe(self, name, module, inputs) -> None:
        self.hessians.add(name, inputs)

    def apply(self, name: str, module) -> dict:
        key = f"{name}.weight"
        block = block_format(self.planned[key].type)
        weight = weight_matrix(module).float().clone()
        hinv = inverse_hessian_factor(self.hessians.pop(name), weight, GPTQ_DAMP)
        fitted: list[BlockParams] = []

        def fix_column(lazy, lazy_hinv, column, position):
            offset = position % block.block_length
            if offset == 0:  # a format block starts: its parameters from the weights as updated so far
                importance = torch.diag(lazy_hinv)[column:column + block.block_length].pow(-2)
                fitted.append(block.fit(lazy[:, column:column + block.block_length], importance))
            values, _ = block.round_columns(lazy[:, column:column + 1], fitted[-1], offset)
            return values[:, 0]

        # The lazy batches hold whole format blocks (a k-quant block is 256 columns).
        obs_sweep(weight, hinv, max(128, block.block_length), lambda *_: None, fix_column)
        set_weight_matrix(module, weight)
        self.params[key] = BlockParams.concat(fitted)
        return {"type": self.planned[key].type}
