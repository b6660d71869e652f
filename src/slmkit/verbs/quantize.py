"""`quantize`: weight-only integer quantization (RTN, GPTQ, AWQ), or QAT (trained onto q4_0's grid, or a GGUF
plan's grids, against the float model). One settings class for `slm quantize`, the `quantize` and `qat` recipe
stages and `slmkit.quantize`'s method config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import slmkit
from slmkit.errors import SlmError
from slmkit.models.checkpoint import check_not_input, check_writable
from slmkit.models.loading import local_path
from slmkit.results import StageResult
from slmkit.schema import setting
from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN, CalibrationSettings, ComputeSettings, OpenSettings
from slmkit.targets import GGUF_TARGETS, PLANNED_TARGET
from slmkit.verbs.registry import ProgressFactory, Verb, register

GRID = ("bits", "group_size", "symmetric", "target", "observer")
QAT_ONLY = ("steps", "lr", "batch_size", "start")
PLAN_BUDGETS = ("size", "bpw", "max_kl", "imatrix_out")
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_size(text: str) -> int:
    """"100MB" -> 100_000_000 (powers of 1000, as file managers show sizes; no unit: bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMG]?B)?\s*", text, flags=re.IGNORECASE)
    if match is None or float(match[1]) <= 0:
        raise SlmError(f"--size {text}: give a positive number and a unit, e.g. 100MB (B, KB, MB or GB)")
    return int(float(match[1]) * SIZE_UNITS[(match[2] or "B").upper()])


@dataclass(kw_only=True)
class QuantizeSettings(CalibrationSettings, ComputeSettings, OpenSettings):
    """How to quantize: `method` on a grid of `bits` and `group_size` (or a GGUF `target`'s); QAT's training."""

    method: str = setting("rtn | gptq | awq | qat (trained on the grid against the float model; needs --target "
                          f"gguf-q4_0, or {PLANNED_TARGET}: a plan's grids, or without a budget the checkpoint's own "
                          "plan's)", "gptq")
    # None: the method's (or the target's) own value, resolved by compress.quantize.resolve_grid.
    bits: int | None = setting("4 or 8 [default: 4].", None)
    group_size: int | None = setting("Input columns per scale; 0 = one scale per row. Must divide every layer's "
                                     "input width [default: 64].", None)
    symmetric: bool | None = setting("Symmetric (q4_0-style, the default) or with a zero point.", None,
                                     flag="--sym/--asym")
    target: str | None = setting("Pick the grid of a GGUF type so `slm export` writes these exact values: "
                                 + " | ".join(GGUF_TARGETS) + f", or {PLANNED_TARGET}: a llama.cpp block type per "
                                 "weight matrix, chosen under --size, --bpw or --max-kl", None)
    size: str | None = setting("--target gguf: the GGUF file's size at most, e.g. 100MB (B, KB, MB, GB: powers of "
                               "1000).", None)
    bpw: float | None = setting("--target gguf: bits per model weight (the file's bits over the parameters).", None)
    max_kl: float | None = setting("--target gguf: the smallest file whose predicted KL divergence per token from "
                                   "the float model is at most this.", None)
    # An output beside the checkpoint, named on the command line: not a recipe setting.
    imatrix_out: Path | None = setting("--target gguf: also write the calibration statistics as an imatrix GGUF "
                                       "(llama-quantize --imatrix reads it).", None, recipe=False)
    act_order: bool = setting("GPTQ: quantize columns by decreasing activation size.", False,
                              flag="--act-order/--no-act-order")
    observer: str | None = setting("How each group's scale is chosen: minmax (its full range) | mse (searches "
                                   "clipped ranges for the least error) [default: mse for gptq, else minmax].", None)
    fake_quant: bool = setting("Save float weights on the grid instead of packed compressed-tensors (quick quality "
                               "checks).", False, flag=("--fake-quant", "--dry-run"))
    # None: QATConfig's default (kept there only); given without --method qat, refused.
    steps: int | None = setting("QAT: optimizer steps [default: 120].", None)
    lr: float | None = setting("QAT: peak learning rate [default: 5e-5].", None)
    batch_size: int | None = setting("QAT: sequences per step [default: 4].", None)
    start: str | None = setting("QAT: the one-shot solution it starts from: gptq | rtn [default: gptq].", None)
    # CalibrationSettings' three, re-declared for QAT's wording, its defaults and the --data / --seq-len aliases.
    calib: Path | None = setting("Calibration text (QAT: training text; any file `slm eval` reads); default: text "
                                 "sampled from the model itself.", None, flag=("--calib", "--data"), recipe=False)
    calib_samples: int | None = setting("Calibration (QAT: training) sequences [default: 128 windows of --calib; "
                                        "without it, the data-free default the README gives; QAT: "
                                        f"{QAT_SAMPLES}].", None)
    calib_seq_len: int | None = setting("Tokens per calibration (QAT: training) sequence [default: 512 with --calib; "
                                        f"without it, the data-free default; QAT: {QAT_SEQ_LEN}].", None,
                                        flag=("--calib-seq-len", "--seq-len"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method != "qat" and any(getattr(self, name) is not None for name in QAT_ONLY):
            raise SlmError("--steps, --lr, --batch-size and --start are QAT's: use them with --method qat")
        if self.target != PLANNED_TARGET and any(getattr(self, name) is not None for name in PLAN_BUDGETS):
            raise SlmError(f"--size, --bpw, --max-kl and --imatrix-out belong to a GGUF plan: use them with --target "
                           f"{PLANNED_TARGET}")
        if self.target == PLANNED_TARGET:
            given = [f"--{name.replace('_', '-')}" for name in GRID if name != "target" and getattr(self, name)
                     is not None] + (["--act-order"] if self.act_order else [])
            if given:
                raise SlmError(f"--target {PLANNED_TARGET} chooses each matrix's grid itself; drop {', '.join(given)}")

    def method_config(self):
        """The config `slmkit.quantize` takes, checked: everything that can fail before the model is loaded."""
        # The method configs live with the methods, which import torch: imported here, out of CLI start-up.
        grid = {name: getattr(self, name) for name in GRID}
        if self.target == PLANNED_TARGET:
            from slmkit.compress.gguf_quantize import GGUFPlanConfig

            budget = dict(size=None if self.size is None else parse_size(self.size), bpw=self.bpw,
                          max_kl=self.max_kl, imatrix_out=None if self.imatrix_out is None else str(self.imatrix_out))
            return self._trained_plan(budget) if self.method == "qat" else GGUFPlanConfig(self.method, **budget)
        if self.method == "qat":
            from slmkit.distillation.qat import qat_config

            config = qat_config(**grid, **{name: getattr(self, name) for name in QAT_ONLY}, device=self.device)
            # Too few sequences to hold some out: refused before they are read or sampled. The count does not
            # depend on the text (QAT's own, or the one asked for).
            config.held_out_count(config.calibration_shape[0] if self.calib_samples is None else self.calib_samples)
        else:
            from slmkit.compress.quantize import quant_config

            config = quant_config(self.method, **grid, act_order=self.act_order)
        if not self.fake_quant:
            from slmkit.compress.formats import check_compressed_tensors

            check_compressed_tensors(config)
        return config

    def _trained_plan(self, budget: dict):
        """--method qat --target gguf: a plan made under the budget, from the --start method's solution, or without
        a budget the checkpoint's own plan; then trained."""
        from slmkit.compress.gguf_quantize import GGUFPlanConfig
        from slmkit.distillation.plan_qat import PlanQATConfig
        from slmkit.distillation.qat import check_start

        if self.start is not None:
            check_start(self.start)
        plan = None
        if any(budget[name] is not None for name in ("size", "bpw", "max_kl")):
            plan = GGUFPlanConfig(self.start or "gptq", **budget)
        elif self.start is not None or self.imatrix_out is not None:
            raise SlmError(f"--method qat --target {PLANNED_TARGET} without --size, --bpw or --max-kl trains the "
                           "checkpoint's own plan; --start and --imatrix-out make a new one: give its budget")
        training = {name: getattr(self, name) for name in ("steps", "lr", "batch_size") if getattr(self, name)
                    is not None}
        config = PlanQATConfig(plan=plan, **training, device=self.device)
        config.held_out_count(config.calibration_shape[0] if self.calib_samples is None else self.calib_samples)
        return config


def check_imatrix_out(path: Path, force: bool, reads: list) -> None:
    """--imatrix-out, before the slow load: not an input, not a directory, replaced only with --force, writable."""
    check_not_input(path, reads)
    if path.is_dir():
        raise SlmError(f"--imatrix-out {path} is a directory; name the .gguf file to write")
    if path.exists() and not force:
        raise SlmError(f"--imatrix-out {path} already exists; pass --force to replace it")
    check_writable(path)


def run(settings: QuantizeSettings, model: str, out: Path, *, progress: ProgressFactory, force: bool = False,
        data: str | Path | None = None) -> StageResult:
    """Quantize `model` and save the result in `out`. `data`: the calibration (QAT: training) text when
    `settings.calib` is unset."""
    from slmkit.verbs.compress import compress  # torch: kept out of CLI start-up

    config = settings.method_config()
    if settings.method == "qat" and settings.target == PLANNED_TARGET and config.plan is None:
        from slmkit.distillation.plan_qat import own_plan

        own_plan(local_path(model), model)  # the plan it trains: there, before the slow load
    if settings.imatrix_out is not None:
        check_imatrix_out(settings.imatrix_out, force, reads=[local_path(model), settings.calib])
    description = ("QAT on a GGUF plan's grids, step" if settings.method == "qat" and settings.target == PLANNED_TARGET
                   else "QAT on q4_0's grid, step" if settings.method == "qat"
                   else f"{settings.method} on a GGUF plan, block" if settings.target == PLANNED_TARGET
                   else f"{settings.method} w{config.bits} quantization, block")
    return compress(settings, model, out, config, progress=progress, force=force, data=data,
                    method=lambda lm, calibration, device, update: slmkit.quantize(
                        lm, config, calibration, fake_quant=settings.fake_quant, target=settings.target,
                        device=device, progress=update),
                    description=description)


VERB = register(Verb("quantize", QuantizeSettings, run))
