"""Quantization-aware training on a GGUF plan's grids: every planned matrix trained on its own llama.cpp block
type (q4_0 ... q8_0, iq4_nl, q2_K ... q6_K), ending on values its blocks hold exactly.

The start is the plan's one-shot solution (compress/gguf_quantize.py: GPTQ or RTN on each matrix's grid), made
first from a budget, or a checkpoint's own plan (its weights and gguf-blocks.safetensors). Each planned weight is
then read through a TrainableGrid (compress/grid_training.py: a latent float weight, the block's step and offset
trained, everything rounded as the file stores it, straight through) registered as a torch parametrization of
the module that holds it, so every holder trains alike: a Linear, GPT-2's Conv1D, the embedding, and an output
head tied to it (one latent matrix and one grid, read by both).

The plan's embedding and output matrices are trained too: a plan may give them as few bits as any other matrix,
and their grid costs elementwise passes over the matrix a step (SmolLM2's tied 49152 x 576 embedding at q4_1: 0.9 s
a step on 2 CPU cores, beside 1.6 s for its head's matmul over a 4 x 256 batch, forward and backward; the Trainer
reads a tied matrix's grid once a pass). A matrix the plan leaves out (a head written in f16) is held at its float
values.

Training is q4_0's (qat.train_on_grid: the KL from the float model's next-token distributions, held-out KL
before and after). At the end each weight is snapped to what `block_format(type).dequantize` gives for its
trained BlockParams, which the plan files then hold, so `slm export` writes it bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torch.nn.utils import parametrize

from slmkit.compress.block_grid import BlockParams
from slmkit.compress.gguf_plan import PLAN_FILE, PlannedTensor, exact_codes, read_plan, read_plan_summary
from slmkit.compress.gguf_quantize import GGUFPlanConfig
from slmkit.compress.grid_training import TrainableGrid
from slmkit.distillation.qat import GridTraining, hold_edges, release_edges
from slmkit.errors import SlmError
from slmkit.models.checkpoint import MANIFEST_NAME, read_manifest
from slmkit.models.layers import weight_matrix
from slmkit.models.loading import load


@dataclass
class PlanQATConfig(GridTraining):
    """A GGUF plan's grids, trained (GridTraining: how): what `slm quantize --method qat --target gguf` asks for.

    Args:
        plan: the plan made first (its budget and types; its method, gptq or rtn, is the one-shot start,
            calibrated on the training sequences); None: the checkpoint's own plan (gguf-plan.json), trained from
            its values against the model it was planned from (its manifest's parent).

    Example: `slmkit.quantize(lm, PlanQATConfig(plan=GGUFPlanConfig(max_kl=0.02), steps=200))`.
    """

    plan: GGUFPlanConfig | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.plan is not None and not isinstance(self.plan, GGUFPlanConfig):
            raise SlmError(f"PlanQATConfig's plan is a GGUFPlanConfig (or None: the checkpoint's own), not "
                           f"{type(self.plan).__name__}")

    def to_dict(self) -> dict:
        planned = {"start": "checkpoint plan"} if self.plan is None else {**self.plan.to_dict(),
                                                                           "start": self.plan.method}
        training = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "plan"}
        return {**planned, "method": self.method, **training}


def _holders(model: nn.Module, weight: nn.Parameter) -> list[nn.Module]:
    """The modules whose `weight` is this parameter (two for an embedding tied to the output head)."""
    return [module for module in model.modules() if module._parameters.get("weight") is weight]


def planned_weights(model: nn.Module, planned: dict[str, PlannedTensor],
                    params: dict[str, BlockParams]) -> dict[str, list[nn.Module]]:
    """The modules holding each planned matrix, checked: a module's weight, still on its plan's grid."""
    parameters = dict(model.named_parameters())  # a tied matrix under its first name, as a plan names it
    found = {}
    for name, tensor in planned.items():
        holders = _holders(model, parameters[name]) if name in parameters else []
        if not holders:
            raise SlmError(f"the GGUF plan names {name}, which is no module's weight in this model: QAT trains "
                           "only the model it was planned for")
        if exact_codes(weight_matrix(holders[0]).float(), tensor.type, params[name]) is None:
            raise SlmError(f"{name} is no longer on the {tensor.type} grid its GGUF plan rounded it to (the model "
                           "changed after quantization): QAT starts from the plan's values; quantize it again")
        found[name] = holders
    return found


@dataclass
class PlanGrids:
    """Where train_on_grid starts on a plan: the planned matrices on their grids in the model, and their block
    parameters."""

    planned: dict[str, PlannedTensor]
    params: dict[str, BlockParams]
    _grids: dict[str, tuple[TrainableGrid, list[nn.Module]]] = field(default_factory=dict, init=False, repr=False)
    _edges: list = field(default_factory=list, init=False, repr=False)

    def install(self, model: nn.Module, config: GridTraining) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Each planned weight read through its TrainableGrid (a parametrization of every module holding it);
        an embedding or output matrix the plan leaves out held at its float values."""
        self._grids = {}
        for name, holders in planned_weights(model, self.planned, self.params).items():
            weight = holders[0].weight
            transposed = type(holders[0]).__name__ == "Conv1D"  # [in, out]: models.layers.weight_matrix
            grid = TrainableGrid(self.planned[name].type, self.params[name], transposed=transposed).to(weight.device)
            for holder in holders:
                parametrize.register_parametrization(holder, "weight", grid)
            self._grids[name] = (grid, holders)
        self._edges = hold_edges(model)
        latent = [holders[0].parametrizations.weight.original for _, holders in self._grids.values()]
        return latent, [scale for grid, _ in self._grids.values() for scale in grid.parameters()]

    def snap(self, model: nn.Module) -> dict[str, BlockParams]:
        """Each planned weight at its trained grid's values, a plain parameter again; its BlockParams."""
        trained = {}
        for name, (grid, holders) in self._grids.items():
            latent = holders[0].parametrizations.weight.original
            values, trained[name] = grid.snapped(latent)
            for holder in holders:
                parametrize.remove_parametrizations(holder, "weight", leave_parametrized=False)
            with torch.no_grad():
                latent.copy_(values)
        release_edges(self._edges)
        return trained


def own_plan(path, spec: str) -> tuple[dict[str, PlannedTensor], dict[str, BlockParams]]:
    """The GGUF plan of the checkpoint at `path` (`spec`, as the user named it), which PlanQATConfig without a plan
    trains; refused where there is none (also before the model loads: verbs.quantize)."""
    found = read_plan(path)
    if found is None:
        raise SlmError(f"{spec} has no GGUF plan ({PLAN_FILE}) to train: give a budget (--size, --bpw or --max-kl) "
                       "to plan one")
    return found


def checkpoint_plan(lm) -> tuple[dict[str, PlannedTensor], dict[str, BlockParams], dict, nn.Module]:
    """A checkpoint's own GGUF plan (checked: every matrix still on its grid), its totals, and the float model it
    was planned from (its manifest's parent, in float32 on the CPU), which QAT on it distils from."""
    planned, params = own_plan(lm.path, lm.spec)
    planned_weights(lm.model, planned, params)
    parent = (read_manifest(lm.path) or {}).get("parent")
    if not parent:
        raise SlmError(f"{lm.spec}: QAT trains its GGUF plan against the model it was planned from, and its "
                       f"{MANIFEST_NAME} names none; run --method qat with a budget on the float model instead")
    try:
        teacher = load(parent, dtype="float32", device="cpu")
    except SlmError as exc:
        raise SlmError(f"{lm.spec}: QAT trains its GGUF plan against {parent}, the model it was planned from, "
                       f"which cannot be opened: {exc}") from exc
    return planned, params, read_plan_summary(lm.path), teacher.model.eval().requires_grad_(False)
