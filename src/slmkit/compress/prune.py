"""Unstructured and N:M pruning: magnitude, Wanda and SparseGPT.

One verb, one config: `slmkit.prune(model, WandaConfig(sparsity=0.5), calibration_ids)`.
Each config names its method; a registered pruner implements the runner's
`observe`/`apply` life cycle. Embeddings and the LM head are outside the
blocks, so they are never pruned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from slmkit.models.layers import set_weight_matrix, weight_matrix
from slmkit.compress.obs import Hessians, inverse_hessian_factor, obs_sweep
from slmkit.compress.runner import run_sequential
from slmkit.errors import SlmError


@dataclass
class PruneConfig:
    """What to remove. Give exactly one of `sparsity` or `pattern`.

    Args:
        sparsity: fraction of weights set to zero in every pruned matrix, 0 < s < 1.
        pattern: "N:M" keeps N weights in every M consecutive inputs of a row (2:4 for sparse tensor cores).
    """

    method: ClassVar[str] = ""
    sparsity: float | None = None
    pattern: str | None = None

    def __post_init__(self):
        if (self.sparsity is None) == (self.pattern is None):
            raise SlmError("give exactly one of --sparsity or --pattern")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise SlmError(f"--sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")
        if self.pattern is not None:
            keep, group = self.n_m
            if not 0 < keep < group:
                raise SlmError(f"--pattern {self.pattern}: N:M needs 0 < N < M (N weights kept of every M)")

    @property
    def n_m(self) -> tuple[int, int]:
        try:
            keep, group = (int(part) for part in self.pattern.split(":"))
        except (AttributeError, ValueError):
            raise SlmError(f"--pattern must look like 2:4, got {self.pattern!r}") from None
        return keep, group

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}


@dataclass
class MagnitudeConfig(PruneConfig):
    """Remove the smallest |W| per matrix (unstructured) or per group (N:M). No calibration."""

    method: ClassVar[str] = "magnitude"


@dataclass
class WandaConfig(PruneConfig):
    """Wanda (Sun et al. 2023, arXiv:2306.11695): score |W_ij| * ||X_j||_2, compared within each output row."""

    method: ClassVar[str] = "wanda"


@dataclass
class SparseGPTConfig(PruneConfig):
    """SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774): OBS mask selection and weight update.

    Args:
        block_size: columns pruned together before the lazy update of the rest.
        damp: fraction of the mean Hessian diagonal added to it for stability.
    """

    method: ClassVar[str] = "sparsegpt"
    block_size: int = 128
    damp: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        if self.block_size < 1 or not 0 <= self.damp < 1:
            raise SlmError(f"block_size must be >= 1 and damp in [0, 1), got {self.block_size}, {self.damp}")
        if self.pattern is not None and self.block_size % self.n_m[1]:
            raise SlmError(f"block_size {self.block_size} must be a multiple of M in --pattern {self.pattern}")


def lowest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """True at the `count` lowest scores of the whole tensor (exact count, ties broken by position)."""
    return row_lowest_mask(scores.reshape(1, -1), count).view_as(scores)


def row_lowest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """True at the `count` lowest scores of every row (exact count, ties broken by position)."""
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    # kthvalue finds the threshold several times faster than topk or a sort on CPU.
    threshold = torch.kthvalue(scores, count, dim=1, keepdim=True).values
    below, ties = scores < threshold, scores == threshold
    missing = count - below.sum(dim=1, keepdim=True)
    return below | (ties & (ties.cumsum(dim=1) <= missing))


def n_m_mask(scores: torch.Tensor, keep: int, group: int) -> torch.Tensor:
    """True at the (group - keep) lowest scores in every `group` consecutive columns of each row."""
    rows, cols = scores.shape
    if cols % group:
        raise SlmError(f"N:M pattern needs the input width ({cols}) to be a multiple of M ({group})")
    grouped = scores.reshape(rows, cols // group, group)
    drop = torch.topk(grouped, group - keep, dim=-1, largest=False).indices
    return torch.zeros_like(grouped, dtype=torch.bool).scatter_(-1, drop, True).reshape(rows, cols)


def _layer_metrics(weight: torch.Tensor) -> dict:
    return {"sparsity": float((weight == 0).sum()) / weight.numel(), "shape": list(weight.shape)}


class MagnitudePruner:
    needs_calibration = False
    per_row = False  # Wanda compares scores within each output row; magnitude across the matrix

    def __init__(self, config: PruneConfig):
        self.config = config

    def observe(self, name, module, inputs) -> None:
        pass

    def scores(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.abs()

    def apply(self, name, module) -> dict:
        weight = weight_matrix(module).float()
        scores = self.scores(name, weight)
        if self.config.pattern is not None:
            mask = n_m_mask(scores, *self.config.n_m)
        elif self.per_row:
            mask = row_lowest_mask(scores, round(weight.shape[1] * self.config.sparsity))
        else:
            mask = lowest_mask(scores, round(weight.numel() * self.config.sparsity))
        weight[mask] = 0
        set_weight_matrix(module, weight)
        return _layer_metrics(weight)


class WandaPruner(MagnitudePruner):
    needs_calibration = True
    per_row = True

    def __init__(self, config: PruneConfig):
        super().__init__(config)
        self.sq_norms: dict[str, torch.Tensor] = {}

    def observe(self, name, module, inputs) -> None:
        inputs = inputs.float()
        self.sq_norms[name] = self.sq_norms.get(name, 0) + (inputs * inputs).sum(dim=0)

    def scores(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.abs() * self.sq_norms.pop(name).sqrt()[None, :]


class SparseGPTPruner:
    needs_calibration = True
    parallel_apply = True  # apply() touches only its own layer and its own Hessian

    def __init__(self, config: SparseGPTConfig):
        self.config = config
        self.hessians = Hessians()

    def observe(self, name, module, inputs) -> None:
        self.hessians.add(name, inputs)

    def apply(self, name, module) -> dict:
        weight = weight_matrix(module).float().clone()
        hessian = self.hessians.pop(name)
        pruned = sparsegpt_prune(weight, hessian, self.config)
        set_weight_matrix(module, pruned)
        return _layer_metrics(pruned)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, config: SparseGPTConfig) -> torch.Tensor:
    """Choose each block's mask by OBS saliency w^2 / [H^-1]_jj^2, then zero it with error compensation."""
    rows, cols = weight.shape
    hinv = inverse_hessian_factor(hessian, weight, config.damp)
    target = round(rows * cols * config.sparsity) if config.sparsity is not None else 0
    state = {"mask": None, "pruned": 0}

    def saliency(block, block_hinv, lo, hi):
        return block[:, lo:hi].pow(2) / torch.diag(block_hinv)[lo:hi].pow(2)[None, :]

    def start_block(block, block_hinv, start):
        if config.pattern is not None:
            state["mask"] = torch.zeros_like(block, dtype=torch.bool)
            return
        # Each block takes its share so the whole matrix ends at exactly `target` zeros.
        count = round(target * (start + block.shape[1]) / cols) - state["pruned"]
        state["mask"] = lowest_mask(saliency(block, block_hinv, 0, block.shape[1]), count)
        state["pruned"] += count

    def fix_column(block, block_hinv, column, _):
        if config.pattern is not None and column % config.n_m[1] == 0:
            group = config.n_m[1]
            state["mask"][:, column:column + group] = n_m_mask(
                saliency(block, block_hinv, column, column + group), *config.n_m)
        return block[:, column].masked_fill(state["mask"][:, column], 0)

    return obs_sweep(weight, hinv, config.block_size, start_block, fix_column)


PRUNERS = {MagnitudeConfig: MagnitudePruner, WandaConfig: WandaPruner, SparseGPTConfig: SparseGPTPruner}
METHODS = {config.method: config for config in PRUNERS}


def prune_config(method: str, *, sparsity: float | None = None, pattern: str | None = None) -> PruneConfig:
    """The pruning config `slm prune` and a recipe's prune stage ask for, checked."""
    config_class = METHODS.get(method)
    if config_class is None:
        raise SlmError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    return config_class(sparsity=sparsity, pattern=pattern)


def register(config_class: type[PruneConfig], pruner_class) -> None:
    """Add a method: a config type and the pruner that implements it (observe/apply, as the runner calls)."""
    PRUNERS[config_class] = pruner_class
    METHODS[config_class.method] = config_class


def prune(model, config: PruneConfig, calibration: torch.Tensor | None = None, *, progress=None,
          device=None) -> dict:
    """Prune every Linear layer in the model's blocks in place; returns per-layer sparsity.

    Example: `slmkit.prune(lm.model, WandaConfig(sparsity=0.5), calibration_ids(lm, "wiki.txt"))`.
    """
    pruner_class = PRUNERS.get(type(config))
    if pruner_class is None:
        raise SlmError(f"unknown pruning config {type(config).__name__}; use one of "
                       f"{', '.join(c.__name__ for c in PRUNERS)}")
    pruner = pruner_class(config)
    if pruner.needs_calibration and calibration is None:
        raise SlmError(f"{config.method} needs calibration data")
    return run_sequential(model, pruner, calibration, progress=progress, device=device)
