"""What every command shares: model flags, loading with a status line, output."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

stdout = Console()
stderr = Console(stderr=True)

ModelArg = Annotated[str, typer.Argument(help="Alias (see `slm models`), local HF directory, .gguf file or hub id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AllowPickleOpt = Annotated[bool, typer.Option("--allow-pickle",
                                               help="Load pickle (.bin/.pt) weights; they can run code.")]
TrustRemoteCodeOpt = Annotated[bool, typer.Option("--trust-remote-code",
                                                   help="Run Python code shipped with the model.")]


OutOpt = Annotated[Path, typer.Option("--out", help="Directory for the new checkpoint.")]
CalibOpt = Annotated[Path | None, typer.Option(help="Calibration text (any file `slm eval` reads); "
                                               "default: text sampled from the model itself.")]
CalibSamplesOpt = Annotated[int, typer.Option(help="Calibration sequences.")]
CalibSeqLenOpt = Annotated[int, typer.Option(help="Tokens per calibration sequence.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for choosing or sampling calibration text.")]
ForceOpt = Annotated[bool, typer.Option(help="Replace a non-empty --out.")]
BackendOpt = Annotated[str, typer.Option(help="auto | torch | llamacpp | onnx. auto runs a .gguf file with llama.cpp "
                                              "when llama-cpp-python is installed, an ONNX export (a directory with "
                                              "model.onnx, or the .onnx file) with onnxruntime, everything else "
                                              "with torch.")]
BACKENDS = ("auto", "torch", "llamacpp", "onnx")
WeightsOpt = Annotated[str, typer.Option(help="torch backend: float32 | bfloat16 | int8 (int8 weights, one scale "
                                              "per output channel: faster decoding on a CPU).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch backend: compile the decode step with "
                                          "torch.compile (much faster tokens; the first answer waits for the "
                                          "compilation, ~10-50 s on a CPU).")]


def calibration_for(lm, calib: Path | None, samples: int, seq_len: int, seed: int):
    from slmkit.compress import calibration_ids

    with stderr.status("preparing calibration data" + ("" if calib else " (sampling text from the model)")):
        return calibration_ids(lm, calib, samples=samples, seq_len=seq_len, seed=seed)


def quiet_libraries() -> None:
    """Library progress bars and warnings would bury our one-line output."""
    import logging
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    # Loading a compressed-tensors checkpoint passes its own quantization config back in; harmless.
    warnings.filterwarnings("ignore", message="You passed `quantization_config`")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # The ONNX exporter warns about every optional operator library it does not find (torchvision).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def choose_backend(spec: str, backend: str) -> str:
    import importlib.util

    from slmkit.errors import SlmError
    from slmkit.runtime.onnx import is_onnx

    if backend not in BACKENDS:
        raise SlmError(f"unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    is_gguf = spec.endswith(".gguf")
    if backend == "llamacpp" and not is_gguf:
        raise SlmError(f"--backend llamacpp runs .gguf files and {spec} is not one; make one with `slm export`")
    if backend == "onnx" and not is_onnx(spec):
        raise SlmError(f"--backend onnx runs a directory holding model.onnx (or the .onnx file) and {spec} is "
                       "neither; make one with `slm export --format onnx`")
    if backend == "auto":
        if is_onnx(spec):  # torch cannot read an ONNX graph, so there is nothing to fall back to
            return "onnx"
        return "llamacpp" if is_gguf and importlib.util.find_spec("llama_cpp") else "torch"
    return backend


def load_model(spec: str, *, allow_pickle: bool = False, trust_remote_code: bool = False, kind: str | None = None,
               backend: str = "torch", n_ctx: int | None = None, logits_all: bool = False,
               weights: str = "float32", compile_decode: bool = False):
    """The model for a command; `backend` as --backend takes it (n_ctx and logits_all: llama.cpp only;
    `weights` as --weights and `compile_decode` as --compile take them: torch only)."""
    from slmkit.errors import SlmError
    from slmkit.models import load
    from slmkit.runtime.weights import check_compile_before_loading, check_weights, convert_weights, enable_compile

    check_weights(weights)  # before the slow load
    chosen = choose_backend(spec, backend)
    if compile_decode and chosen == "torch":
        check_compile_before_loading(spec)
    quiet_libraries()
    if chosen == "onnx":
        from slmkit.runtime.onnx import OnnxModel

        if weights != "float32" or compile_decode:
            raise SlmError(f"{_torch_only_flag(weights)} applies to the torch backend; an ONNX "
                           "export runs on onnxruntime with the float32 weights it was exported with")
        with stderr.status(f"loading {spec} with onnxruntime"):
            return OnnxModel(spec, kind=kind)
    if chosen == "llamacpp":
        from slmkit.errors import ModelLoadError
        from slmkit.runtime.llamacpp import LlamaCppModel

        if weights != "float32" or compile_decode:
            reason = ("a GGUF's weight types are chosen when it is exported (slm export --quant)"
                      if weights != "float32" else "llama.cpp runs a GGUF on its own compiled kernels")
            raise SlmError(f"{_torch_only_flag(weights)} applies to the torch backend; {reason}, "
                           "or add --backend torch")
        path = Path(spec).expanduser()
        if kind not in (None, "causal-lm"):
            raise ModelLoadError(f"{spec}: a GGUF file holds a causal language model")
        with stderr.status(f"loading {spec} with llama.cpp"):
            return LlamaCppModel(path, n_ctx=n_ctx, logits_all=logits_all)
    with stderr.status(f"loading {spec} (a packaged GGUF is converted once, then cached)"):
        lm = load(spec, kind=kind, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if weights != "float32":
        convert_weights(lm, weights)
    if compile_decode:
        enable_compile(lm)
    return lm


def _torch_only_flag(weights: str) -> str:
    """The torch-only flag a refusal names: --weights when it was given, else --compile."""
    return f"--weights {weights}" if weights != "float32" else "--compile"


@contextmanager
def progress_bar(description: str):
    """Yields a `progress(done, total)` callback drawing a bar on stderr."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr, transient=True) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def print_table(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    stdout.print(table)
