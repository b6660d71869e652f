"""Quantization-aware training on q4_0's grid: a 4-bit model healed by distilling from its own float weights,
ending on values llama.cpp's q4_0 blocks hold exactly.

The model starts from a one-shot solution on the grid (GPTQ, or RTN): blocks of 32 weights, one float16 scale
each, codes -8..7. Every quantized Linear then keeps a latent float weight and its blocks' scales, both trained,
and computes with codes x scale: the rounding to codes passes the weight's gradient straight through (STE), the
clamp to -8..7 does not; a scale's gradient is taken with its codes held (d value / d scale = code, as
EfficientQAT trains step sizes; LSQ's estimate, code - weight / scale, raised the KL on a tiny model where
this lowered it), through the rounding to float16 straight. The loss
is the KL from the float model's next-token distributions (self-distillation, as Gemma 3's QAT and LLM-QAT),
through DistillationTrainer, trained as every slmkit run is (train.run: the arguments QATConfig declares, one
Trainer over the sequences). At the end each weight is snapped to its codes x float16 scale, so the checkpoint
is on the grid and `slm export --quant q4_0` writes its blocks bit for bit.

`train_on_grid` trains whatever grids its start installs: q4_0's here, a GGUF plan's block types in plan_qat.py.
"""

from __future__ import annotations

import copy
import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import TrainerCallback

from slmkit.compress.block_grid import Levels
from slmkit.compress.grid_training import grid_values, straight_through_float16
from slmkit.compress.quantize import GPTQConfig, QuantConfig, RTNConfig, resolve_grid
from slmkit.compress.quantize import quantize as quantize_layers
from slmkit.data.training import collator
from slmkit.distillation.trainer import DistillationTrainer
from slmkit.errors import SlmError
from slmkit.models.devices import check_trainer_device, resolve_device
from slmkit.models.layers import block_lists, linear_layers
from slmkit.schema import setting
from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN
from slmkit.train.run import TrainingRun, computes_bfloat16, trainer_arguments

START_METHODS = {"gptq": GPTQConfig, "rtn": RTNConfig}
GROUP = 32  # q4_0's block


@dataclass
class GridTraining:
    """How QAT trains, on any grid (QATConfig: q4_0's; plan_qat.PlanQATConfig: a GGUF plan's).

    Args:
        steps: optimizer steps; batch_size: sequences per step; lr: peak learning rate (linear decay after a
            3% warm-up) of the latent weights and the scales.
        held_out: sequences kept out of training, on which the KL to the float model is measured before and
            after (recorded in the manifest); None: an eighth of them, 1 to 8.
        scale_steps: the first steps train the scales alone, the weights held (EfficientQAT's second phase).
        learn_scales: False holds each block's scale (so its clipping range) at the start's.
        device: where training runs: auto (a GPU when there is one) | cpu | cuda | mps; a whole device type, as
            transformers' Trainer takes it (another GPU: CUDA_VISIBLE_DEVICES).

    A Calibration that asks for no sequence count or length takes `calibration_shape` (QAT_SAMPLES x
    QAT_SEQ_LEN), with text or without, as `slm quantize --method qat` and the qat stage do.
    """

    method: ClassVar[str] = "qat"
    calibration_shape: ClassVar[tuple[int, int]] = (QAT_SAMPLES, QAT_SEQ_LEN)
    # trainer=: the TrainingArguments field(s) a setting fills (train.run). The CLI and the recipe offer these
    # through verbs.quantize's QuantizeSettings, not from here.
    # 4 x 256 tokens a step: SmolLM2-135M takes 12.7 minutes end to end on 2 AVX512-BF16 CPU cores
    steps: int = setting("Optimizer steps.", 120, trainer="max_steps")
    # measured on SmolLM2: 100 steps at 5e-5 beat 1e-5 (held-out KL 0.081 vs 0.100)
    lr: float = setting("Peak learning rate of the latent weights and the scales.", 5e-5, trainer="learning_rate")
    batch_size: int = setting("Sequences per step.", 4,
                              trainer=("per_device_train_batch_size", "per_device_eval_batch_size"))
    held_out: int | None = None
    scale_steps: int = 0
    learn_scales: bool = True
    device: str = "auto"

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or (self.held_out is not None and self.held_out < 1):
            raise SlmError(f"--steps, --batch-size and the held-out sequences must be at least 1 (got {self.steps}, "
                           f"{self.batch_size}, {self.held_out})")
        if not 0 <= self.scale_steps < self.steps:
            raise SlmError(f"scale_steps {self.scale_steps}: must be from 0 to below steps ({self.steps})")
        if self.scale_steps and not self.learn_scales:
            raise SlmError("scale_steps trains the scales alone first: it needs learn_scales")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SlmError(f"--lr {self.lr}: must be a positive number")
        check_trainer_device(self.device)

    def held_out_count(self, sequences: int) -> int:
        """How many of `sequences` are held out; refuses too few to train on the rest."""
        held = self.held_out if self.held_out is not None else min(8, max(1, sequences // 8))
        if sequences <= held:
            raise SlmError(f"QAT holds {held} of its {sequences} sequences out to measure the KL and trains on the "
                           f"rest: give more (--calib-samples)")
        return held


@dataclass
class QATConfig(GridTraining, QuantConfig):
    """q4_0's grid (what `--target gguf-q4_0` picks), trained (GridTraining: how).

    Args:
        start: the one-shot solution training starts from: gptq (calibrated on the same sequences) or rtn.
        edges_at_q8_0: train with the embedding and output matrices at the q8_0 values the export writes, not
            their float ones.
    """

    method: ClassVar[str] = "qat"
    group_size: int = GROUP
    float16_scales: bool = True
    observer: str = "mse"
    start: str = "gptq"
    edges_at_q8_0: bool = False

    def __post_init__(self):
        QuantConfig.__post_init__(self)
        if (self.bits, self.group_size, self.symmetric, self.float16_scales) != (4, GROUP, True, True):
            raise SlmError("--method qat trains on q4_0's grid: pass --target gguf-q4_0 (4 bits, blocks of 32, "
                           "symmetric, float16 scales)")
        check_start(self.start)
        GridTraining.__post_init__(self)

    def start_config(self) -> QuantConfig:
        grid = dict(bits=self.bits, group_size=self.group_size, symmetric=True, float16_scales=True)
        return START_METHODS[self.start](**grid, **({"observer": self.observer} if self.start == "gptq" else {}))


def check_start(start: str) -> None:
    """A one-shot method QAT can start from (q4_0's grid or a plan's), or the one-line refusal naming them."""
    if start not in START_METHODS:
        raise SlmError(f"--start {start!r}: choose one of {', '.join(START_METHODS)}")


def qat_config(*, bits: int | None, group_size: int | None, symmetric: bool | None, target: str | None,
               observer: str | None, device: str = "auto", **training) -> QATConfig:
    """The QATConfig `slm quantize --method qat` and the qat stage ask for: the target's grid (QATConfig refuses
    any but q4_0's), and the training settings given (None: the default)."""
    grid = resolve_grid(bits, group_size, symmetric, target)
    given = {name: value for name, value in {**training, "observer": observer}.items() if value is not None}
    return QATConfig(**grid, **given, device=device)


@functools.cache
def _signed_levels(bits: int) -> Levels:
    return Levels(range(-(2 ** (bits - 1)), 2 ** (bits - 1)))


def grid_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """codes x float16(scale) for a [rows, cols] weight and [rows, cols / 32] scales: the values a q4_0 block
    dequantizes to, computed as the exporter's codes are (weight / scale, rounded half to even, clamped)."""
    return grid_values(weight, straight_through_float16(scale), None, _signed_levels(bits), GROUP)


class GridLinear(nn.Module):
    """A Linear that computes with its weight read through the grid; weight and scale both learn."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor, bits: int):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().float().clone())
        self.scale = nn.Parameter(scale.detach().float().clone().to(self.weight.device))
        self.bias = linear.bias
        self.bits = bits

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(inputs, grid_weight(self.weight, self.scale, self.bits), self.bias)

    def snapped(self) -> tuple[nn.Linear, torch.Tensor]:
        """A plain Linear holding codes x float16 scale, and those scales (what is exported)."""
        out_features, in_features = self.weight.shape
        linear = nn.Linear(in_features, out_features, bias=self.bias is not None, device=self.weight.device)
        with torch.no_grad():
            linear.weight.copy_(grid_weight(self.weight, self.scale, self.bits))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear, self.scale.detach().half().float().cpu()


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def check_layers(model: nn.Module) -> None:
    """Refuse, before any slow work, a layer QAT cannot train onto q4_0's grid: GPT-2's Conv1D (QAT swaps
    nn.Linear layers) or an input width q4_0's blocks of 32 do not divide."""
    for _, blocks in block_lists(model):
        for name, layer in linear_layers(blocks[0]).items():
            if not isinstance(layer, nn.Linear):
                raise SlmError(f"QAT trains nn.Linear layers; {name} is a {type(layer).__name__} (GPT-2 style)")
            if layer.in_features % GROUP:
                raise SlmError(f"q4_0 stores blocks of {GROUP} weights: {name} takes {layer.in_features} inputs, "
                               f"not a multiple of {GROUP}, so --method qat --target gguf-q4_0 cannot train it")


def training_device(config: GridTraining, device: torch.device | str | None = None) -> torch.device:
    """Where QAT trains: `device` (a name, or resolved already), else `config.device`; never cuda:N, where the
    one-shot start would run on that GPU and the Trainer on the first."""
    device = resolve_device(config.device if device is None else device)
    check_trainer_device(device)
    return device


def quantization_aware_training(model: nn.Module, tokenizer, config: QATConfig, ids: torch.Tensor, *,
                                device: torch.device | str | None = None,
                                progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
    """Train `model` in place onto the grid (see the module's docstring) on `ids` [sequences, tokens]; returns
    (metrics, per-layer (scale, zero point)) as `compress.quantize` does, for the compressed-tensors writer.
    `device`: where it trains (`training_device`)."""
    held = config.held_out_count(len(ids))
    device = training_device(config, device)
    check_layers(model)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    start = start_on_grid(model, config, ids[held:], device)
    return train_on_grid(model, teacher, tokenizer, config, ids, start, device, progress=progress)


class GridStart(Protocol):
    """Where train_on_grid starts: the grids it installs in the model to train, and snaps back at the end."""

    def install(self, model: nn.Module, config) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Make `model` compute through trainable grids (in place); (their latent weights, their scales)."""

    def snap(self, model: nn.Module) -> dict:
        """`model` back to plain modules holding the trained grids' values; what is stored of each grid."""


@dataclass
class LayerScales:
    """start_on_grid's solution, its layers' weights on q4_0's grid in the model: each layer's block scales."""

    scales: dict[str, torch.Tensor]
    bits: int = 4
    _layers: dict[str, GridLinear] = field(default_factory=dict, init=False, repr=False)
    _edges: list = field(default_factory=list, init=False, repr=False)

    def install(self, model: nn.Module, config: QATConfig) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Each layer swapped for a GridLinear; the embedding and output matrices, written at q8_0 by the export,
        not trained (at those q8_0 values with `config.edges_at_q8_0`)."""
        self._layers = {name: GridLinear(model.get_submodule(name), scale, self.bits)
                        for name, scale in self.scales.items()}
        for name, layer in self._layers.items():
            _swap(model, name, layer)
        self._edges = hold_edges(model)
        if config.edges_at_q8_0:
            with torch.no_grad():
                for weight, _ in self._edges:
                    weight.copy_(q8_0_values(weight))
        return [layer.weight for layer in self._layers.values()], [layer.scale for layer in self._layers.values()]

    def snap(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Plain Linears at codes x float16 scale; per layer (scale, zero point), for the compressed-tensors
        writer."""
        trained = {}
        for name, layer in self._layers.items():
            linear, scale = layer.snapped()
            _swap(model, name, linear)
            trained[name] = (scale, torch.zeros_like(scale))
        release_edges(self._edges)
        return trained


def hold_edges(model: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    """Hold (no gradient) the embedding and output matrices no grid trains (none parametrized by one);
    each with whether it trained before, for release_edges."""
    modules = (model.get_input_embeddings(), model.get_output_embeddings())
    weights = {id(module.weight): module.weight for module in modules
               if module is not None and not parametrize.is_parametrized(module, "weight")}
    held = [(weight, weight.requires_grad) for weight in weights.values()]
    for weight, _ in held:
        weight.requires_grad_(False)
    return held


def release_edges(held: list[tuple[nn.Parameter, bool]]) -> None:
    for weight, trainable in held:
        weight.requires_grad_(trainable)


def start_on_grid(model: nn.Module, config: QATConfig, train: torch.Tensor, device) -> LayerScales:
    """The one-shot solution (config.start, calibrated on `train`) written into `model`; its scales per layer."""
    _, params = quantize_layers(model, config.start_config(), train, device=device)
    return LayerScales({name: scale for name, (scale, _) in params.items()}, config.bits)


def train_on_grid(model: nn.Module, teacher: nn.Module, tokenizer, config: GridTraining, ids: torch.Tensor,
                  start: GridStart, device, *, progress: Callable[[int, int], None] | None = None
                  ) -> tuple[dict, dict]:
    """QAT from `start` (start_on_grid's solution, or plan_qat's) in `model` against the float `teacher`; see
    quantization_aware_training. Returns (metrics, `start.snap`'s stored grids)."""
    held = config.held_out_count(len(ids))
    held_out, train = ids[:held], ids[held:]
    weights, scales = start.install(model, config)
    for scale in scales:
        scale.requires_grad_(config.learn_scales)
    callbacks = [ScalesFirst(weights, config.scale_steps)] if config.scale_steps else []
    report = None if progress is None else (lambda step, total, facts: progress(step, total))
    with tempfile.TemporaryDirectory(prefix="slmkit-qat-") as scratch:
        run = TrainingRun(GridTrainer, model, _arguments(config, device, scratch), train=_rows(train),
                          held_out=_rows(held_out), collator=collator("text", tokenizer), tokenizer=tokenizer,
                          progress=report, callbacks=callbacks, teacher=teacher,
                          loss="fkl", temperature=1.0, alpha_ce=0.0, beta=0.5,
                          # Each sequence is read ~9 times (120 steps x 4 of 56): the teacher runs once over them,
                          # its distributions kept (SmolLM2: 1.6 GB; more than 4 GiB runs it every step instead).
                          teacher_memory_bytes=4 << 30,
                          # bfloat16 matmuls where native: SmolLM2-135M's step 0.65x of float32's on 2 EPYC
                          # cores, the held-out KL after 25 steps the same (0.09308 vs 0.09301).
                          autocast=torch.bfloat16 if computes_bfloat16(device) else None)
        before = run.trainer.evaluate()["eval_kd_loss"]
        run.train()
        if run.trainer.stopped_by_signal:
            raise SlmError(f"QAT stopped by a signal at step {run.trainer.state.global_step} of {config.steps}; "
                           "nothing was written")
        after = run.trainer.evaluate()["eval_kd_loss"]
        curve = run.curve  # read after the last evaluation: it is the curve's eval point
    model.to("cpu")
    trained = start.snap(model)
    state = run.trainer.state
    metrics = {"kl_before": before, "kl_after": after, "steps": state.global_step,
               "tokens": state.num_input_tokens_seen,
               "train_sequences": len(train), "held_out_sequences": len(held_out), "loss_curve": curve}
    return metrics, trained


def q8_0_values(weight: torch.Tensor) -> torch.Tensor:
    """What `slm export --quant q4_0` writes for an embedding or output matrix, dequantized: its q8_0 blocks."""
    import gguf

    kind = gguf.GGMLQuantizationType.Q8_0
    rows = weight.detach().float().cpu().numpy()
    values = gguf.quants.dequantize(gguf.quants.quantize(rows, kind), kind).reshape(rows.shape)
    return torch.from_numpy(values).to(weight.device, weight.dtype)


class ScalesFirst(TrainerCallback):
    """Holds the latent weights (no gradient, so AdamW leaves them) for the first `steps` steps: the scales
    train alone."""

    def __init__(self, weights: list[nn.Parameter], steps: int):
        self.weights, self.steps = weights, steps

    def on_step_begin(self, args, state, control, **kwargs):
        for weight in self.weights:
            weight.requires_grad_(state.global_step >= self.steps)


class GridTrainer(DistillationTrainer):
    """QAT's trainer: DistillationTrainer with the KL alone in the loss (alpha_ce 0), so the loss curve keeps
    that part and leaves out the cross-entropy it logs beside it."""

    def compute_loss(self, *args, **kwargs):
        # A matrix a plan's grid parametrizes (plan_qat) is read through it once a pass, though read twice (an
        # embedding tied to the output head).
        with parametrize.cached():
            return super().compute_loss(*args, **kwargs)

    logged_parts = ("kd_loss",)


def _rows(ids: torch.Tensor) -> list[dict]:
    return [{"input_ids": row.tolist()} for row in ids]


def _arguments(config: QATConfig, device: torch.device, scratch: str):
    """The Trainer's arguments: the steps, learning rate and batch size QATConfig declares, and these, fixed or
    derived. The Trainer places the model by device type alone (cuda: its first GPU); training_device refused
    cuda:N."""
    # float32: not the Trainer's mixed precision (it would evaluate the KL in bfloat16 too); the student's
    # training forward autocasts instead (train_on_grid)
    return trainer_arguments(scratch, config, device=device, dtype="float32",
                             logging_steps=max(1, config.steps // 100),  # about a hundred points on the curve
                             save_strategy="no",  # the scratch directory goes with the run: nothing to resume
                             seed=0,
                             prediction_loss_only=True)  # evaluation reads the loss (the KL), no predictions
