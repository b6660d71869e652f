"""Setting groups several verbs share (slmkit.schema): which text calibrates a method, how a model file is opened
and where it runs. A verb's config inherits the groups it takes, so `--calib-samples` or `--trust-remote-code`
is declared once for every command and recipe stage that offers it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.models.devices import DEVICES
from slmkit.schema import setting

# The data-free default, measured (benchmarks/datafree_calibration.py, SmolLM2-135M, GPTQ q4_0, WikiText-2
# perplexity on 16 x 2048 tokens): 128 x 512 sampled tokens 25.36, 64 x 256 25.07, 32 x 256 24.68, 16 x 256
# 24.73. 16 x 256 also stays within 1 %, but then one odd sequence is a sixteenth of every Hessian and 4096
# tokens are fewer than a 1B model's FFN width; 32 x 256 costs about 40 s more on 2 cores.
DATA_FREE_SAMPLES, DATA_FREE_SEQ_LEN = 32, 256
# QAT's training sequences x tokens when none are asked for (with --calib text or without): more than a one-shot
# calibration reads, few enough that a model sampling its own on llama.cpp takes a couple of minutes.
QAT_SAMPLES, QAT_SEQ_LEN = 64, 256


@dataclass(kw_only=True)
class CalibrationSettings:
    """The text a calibrated method reads: a file's windows, or text the model samples itself."""

    # A recipe calibrates on the run's --data (or a synth stage's answers), so the file is no stage setting.
    calib: Path | None = setting("Calibration text (any file `slm eval` reads); default: text sampled from the "
                                 "model itself.", None, recipe=False)
    calib_samples: int | None = setting("Calibration sequences [default: 128 windows of --calib; without it, the "
                                        "data-free default the README gives].", None)
    calib_seq_len: int | None = setting("Tokens per calibration sequence [default: 512 with --calib; without it, "
                                        "the data-free default].", None)
    seed: int = setting("Seed for choosing or sampling calibration text.", 0)
    calib_cache: str = setting("on | off: keep the text a model samples for data-free calibration, per model and "
                               "settings, and reuse it.", "on", recipe=False)

    def __post_init__(self) -> None:
        if self.calib_cache not in ("on", "off"):
            raise SlmError(f"--calib-cache {self.calib_cache}: choose on or off")


@dataclass(kw_only=True)
class OpenSettings:
    """Whether a model file may run code when it is opened."""

    allow_pickle: bool = setting("Load pickle (.bin/.pt) weights; they can run code.", False, recipe=False)
    trust_remote_code: bool = setting("Run Python code shipped with the model.", False, recipe=False)

    def open_options(self) -> dict:
        return {"allow_pickle": self.allow_pickle, "trust_remote_code": self.trust_remote_code}


@dataclass(kw_only=True)
class ComputeSettings:
    """Where a compression method computes: the model waits on the CPU, each block goes to the device."""

    device: str = setting("Where each block is computed: auto | cpu | cuda | cuda:N | mps (the model waits on the "
                          "CPU; auto: CUDA when present).", "auto", recipe=False)


@dataclass(kw_only=True)
class PlacementSettings:
    """Where the torch backend runs a model, and in what precision."""

    device: str = setting(f"torch backend: {DEVICES} (auto: CUDA when present, else the CPU).", "auto",
                          recipe=False)
    dtype: str = setting("torch backend: auto | float32 | bfloat16 | float16 (auto: float32 on the CPU, bfloat16 "
                         "on a GPU that has it).", "auto", recipe=False)


@dataclass(kw_only=True)
class RuntimeSettings(PlacementSettings):
    """Which runtime runs a model, and on the torch backend where and in what precision."""

    backend: str = setting("auto | torch | llamacpp | onnx | executorch. auto runs a .gguf file with llama.cpp when "
                           "llama-cpp-python is installed, an ONNX export (a directory with model.onnx, or the "
                           ".onnx file) with onnxruntime, an ExecuTorch export (model.pte) with ExecuTorch, "
                           "everything else with torch.", "auto", recipe=False)
    weights: str = setting("torch backend: float32 | bfloat16 | int8 (int8 weights, one scale per output channel: "
                           "faster decoding on a CPU).", "float32")
    # Checked where the model is opened (runtime.open_model), before the slow load.

    def runtime_options(self) -> dict:
        return {"backend": self.backend, "device": self.device, "dtype": self.dtype, "weights": self.weights}


@dataclass(kw_only=True)
class CompileSettings:
    """Whether the torch runtime compiles its decode step."""

    compile: bool = setting("torch backend: compile the decode step with torch.compile (much faster tokens; the "
                            "first answer waits for the compilation, ~10-50 s on a CPU).", False)
