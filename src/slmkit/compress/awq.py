"""AWQ (Lin et al. 2023, arXiv:2306.00978): activation-aware scales and clipping, then round to nearest.

Per block, for each set of layers reading the same input (q/k/v after the
attention norm, gate/up after the FFN norm, down after up):
1. scale search: s = mean|x|^alpha per input channel, alpha on a grid; keep the
   alpha whose quantized (W * s) applied to (x / s) best reproduces x @ W.T;
2. fold: W *= s, and the op that produced x (the norm, or up_proj's rows) /= s,
   so the float model computes exactly what it did before;
3. clip search per layer: shrink each group's range to minimise output error;
4. round to nearest on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from slmkit.compress.grid import fake_quantize, group_params
from slmkit.models.architectures import roles_of, supporting
from slmkit.models.layers import set_weight_matrix, weight_matrix
from slmkit.compress.quantize import QuantConfig, RTNQuantizer, _group_size, register
from slmkit.errors import SlmError

CLIP_TOKENS = 256  # tokens the clip search scores on (evenly spaced over those kept)


@dataclass
class AWQConfig(QuantConfig):
    """AWQ on the same grid as RTN/GPTQ.

    Args:
        grid: number of alpha values tried for the scales (and of clip ratios).
        max_shrink: clipping may shrink a group's range by up to this fraction.
        max_tokens: calibration tokens kept per layer for the searches (bounds memory and time).
    """

    method: ClassVar[str] = "awq"
    grid: int = 20
    max_shrink: float = 0.5
    max_tokens: int = 2048

    def __post_init__(self):
        super().__post_init__()
        if self.grid < 2 or not 0 <= self.max_shrink < 1 or self.max_tokens < 1:
            raise SlmError(f"AWQ needs grid >= 2, max_shrink in [0, 1), max_tokens >= 1 "
                           f"(got {self.grid}, {self.max_shrink}, {self.max_tokens})")


class AWQQuantizer(RTNQuantizer):
    needs_calibration = True

    def __init__(self, config: AWQConfig):
        super().__init__(config)
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.abs_sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.family: dict | None = None

    def bind(self, model) -> None:
        self.family = roles_of(model)
        if self.family is None:
            raise SlmError(f"AWQ supports {', '.join(supporting('roles'))}, not "
                           f"{model.config.get_text_config().model_type}; use --method gptq")

    def observe(self, name, module, inputs) -> None:
        inputs = inputs.float()
        kept = sum(len(x) for x in self.inputs.get(name, []))
        if kept < self.config.max_tokens:
            self.inputs.setdefault(name, []).append(inputs[: self.config.max_tokens - kept].clone())
        self.abs_sums[name] = self.abs_sums.get(name, 0) + inputs.abs().sum(dim=0)
        self.counts[name] = self.counts.get(name, 0) + len(inputs)

    def _quantized(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        rows, cols = weight.shape
        group = _group_size(self.config, name, cols)
        flat = weight.reshape(-1, group)
        scale, zero = group_params(flat, self.config.bits, self.config.symmetric, self.config.float16_scales,
                                   self.config.observer)
        return fake_quantize(flat, scale, zero, self.config.bits, self.config.symmetric).reshape(rows, cols)

    def prepare_block(self, prefix: str, block) -> None:
        """Search and fold the per-channel scales of each input-sharing set of layers."""
        family = self.family
        sets = [(family["attn_norm"], [family["q"], family["k"], family["v"]]),
                (family["ffn_norm"], list(family["ffn_in"])),
                (family["ffn_up"], [family["ffn_out"]])]
        for previous, members in sets:
            if previous is not None:  # None: the family has no exactly foldable producer there
                self._scale_set(prefix, block, previous, members)

    def _scale_set(self, prefix: str, block, previous: str, members: list[str]) -> None:
        names = [f"{prefix}.{member}" for member in members]
        inputs = torch.cat(self.inputs[names[0]])
        weights = [weight_matrix(block.get_submodule(member)).float() for member in members]
        stacked = torch.cat(weights)
        reference = inputs @ stacked.t()
        mean_abs = self.abs_sums[names[0]] / self.counts[names[0]]
        best_error, best_scales = float("inf"), None
        for step in range(self.config.grid):
            scales = mean_abs.pow(step / self.config.grid).clamp(min=1e-4)
            scales = scales / (scales.max() * scales.min()).sqrt()
            quantized = torch.cat([self._quantized(w * scales, name) for w, name in zip(weights, names)])
            error = float((inputs @ (quantized / scales).t() - reference).pow(2).mean())
            if error < best_error:
                best_error, best_scales = error, scales
        previous_module = block.get_submodule(previous)
        with torch.no_grad():
            if hasattr(previous_module, "weight") and previous_module.weight.dim() == 1:  # a norm
                previous_module.weight.div_(best_scales)
                if getattr(previous_module, "bias", None) is not None:
                    previous_module.bias.div_(best_scales)
            else:  # a Linear whose output rows feed these layers
                set_weight_matrix(previous_module, weight_matrix(previous_module).float() / best_scales[:, None])
                if previous_module.bias is not None:
                    previous_module.bias.div_(best_scales)
        for member, weight, name in zip(members, weights, names):
            set_weight_matrix(block.get_submodule(member), weight * best_scales)
            self.inputs[name] = [x / best_scales for x in self.inputs[name]]

    def apply(self, name, module) -> dict:
        """Clip each group's range where that lowers the output error, then round to nearest.

        Query and key projections are not clipped: their error acts through the softmax,
        which a plain output error does not measure (AWQ's reference code skips them too).
        """
        if name.endswith((f".{self.family['q']}", f".{self.family['k']}")):
            self.inputs.pop(name)
            self.abs_sums.pop(name, None)
            return super().apply(name, module)
        weight = weight_matrix(module).float().clone()
        inputs = torch.cat(self.inputs.pop(name))
        inputs = inputs[torch.linspace(0, len(inputs) - 1, min(len(inputs), CLIP_TOKENS), device=inputs.device).long()]
        self.abs_sums.pop(name, None)
        rows, cols = weight.shape
        group = _group_size(self.config, name, cols)
        grouped = weight.reshape(rows, cols // group, group)
        x = inputs.reshape(len(inputs), cols // group, group)
        amax = grouped.abs().amax(dim=-1, keepdim=True)
        best_error = torch.full((rows, cols // group, 1), float("inf"), device=inputs.device)
        best_amax = amax.clone()
        for step in range(int(self.config.max_shrink * self.config.grid) + 1):
            limit = amax * (1 - step / self.config.grid)
            clipped = grouped.clamp(-limit, limit)
            quantized = self._quantized(clipped.reshape(rows, cols), name).reshape(rows, cols // group, group)
            # output error per (row, group): the group's contribution to each output, over all tokens
            error = torch.einsum("tgc,rgc->trg", x, quantized - grouped).pow(2).mean(dim=0)[..., None]
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_amax = torch.where(better, limit, best_amax)
        set_weight_matrix(module, grouped.clamp(-best_amax, best_amax).reshape(rows, cols))
        metrics = super().apply(name, module)
        return metrics | {"weight_mse": float((weight_matrix(module).float() - weight).pow(2).mean())}


register(AWQConfig, AWQQuantizer)
