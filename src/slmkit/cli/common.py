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

from slmkit.errors import SlmError

stdout = Console()
stderr = Console(stderr=True)
# Progress bars draw on a terminal only: elsewhere (a log, a pipe) rich leaves an empty line where the
# transient bar was, before whatever is printed next (an error line too).

MODEL_HELP = "Alias (see `slm models`), local HF directory, .gguf file or hub id"
ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP + ".")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AllowPickleOpt = Annotated[bool, typer.Option("--allow-pickle",
                                               help="Load pickle (.bin/.pt) weights; they can run code.")]
TrustRemoteCodeOpt = Annotated[bool, typer.Option("--trust-remote-code",
                                                   help="Run Python code shipped with the model.")]


OutOpt = Annotated[Path, typer.Option("--out", help="Directory for the new checkpoint.")]
CalibOpt = Annotated[Path | None, typer.Option(help="Calibration text (any file `slm eval` reads); "
                                               "default: text sampled from the model itself.")]
CalibSamplesOpt = Annotated[int | None, typer.Option(help="Calibration sequences [default: 128 windows of --calib; "
                                                     "without it, the data-free default the README gives].")]
CalibSeqLenOpt = Annotated[int | None, typer.Option(help="Tokens per calibration sequence [default: 512 with "
                                                    "--calib; without it, the data-free default].")]
CalibCacheOpt = Annotated[str, typer.Option("--calib-cache", help="on | off: keep the text a model samples for "
                                            "data-free calibration, per model and settings, and reuse it.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for choosing or sampling calibration text.")]
ForceOpt = Annotated[bool, typer.Option(help="Replace a non-empty --out.")]
BackendOpt = Annotated[str, typer.Option(help="auto | torch | llamacpp | onnx. auto runs a .gguf file with llama.cpp "
                                              "when llama-cpp-python is installed, an ONNX export (a directory with "
                                              "model.onnx, or the .onnx file) with onnxruntime, everything else "
                                              "with torch.")]
WeightsOpt = Annotated[str, typer.Option(help="torch backend: float32 | bfloat16 | int8 (int8 weights, one scale "
                                              "per output channel: faster decoding on a CPU).")]
DeviceOpt = Annotated[str, typer.Option(help="torch backend: auto | cpu | cuda | cuda:N | mps (auto: CUDA when "
                                             "present, else the CPU).")]
DtypeOpt = Annotated[str, typer.Option(help="torch backend: auto | float32 | bfloat16 | float16 (auto: float32 on "
                                            "the CPU, bfloat16 on a GPU that has it).")]
ComputeDeviceOpt = Annotated[str, typer.Option("--device", help="Where each block is computed: auto | cpu | cuda | "
                                             "cuda:N | mps (the model waits on the CPU; auto: CUDA when present).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch backend: compile the decode step with "
                                          "torch.compile (much faster tokens; the first answer waits for the "
                                          "compilation, ~10-50 s on a CPU).")]


def calibration_options(calib: Path | None, samples: int | None, seq_len: int | None, seed: int,
                        calib_cache: str):
    """The `Calibration` the --calib* options ask for."""
    import slmkit

    if calib_cache not in ("on", "off"):
        raise SlmError(f"--calib-cache {calib_cache}: choose on or off")
    return slmkit.Calibration(calib, samples, seq_len, seed, cache=calib_cache == "on")


def calibration_for(lm, config, calibration):
    """`calibration` with its token ids made when the method reads data: under a status line for a file's
    windows, under a bar showing tokens/s while the model samples them."""
    from slmkit.compress import needs_calibration

    if not needs_calibration(config):
        return calibration
    if calibration.data:
        with stderr.status("preparing calibration data"):
            calibration.ids(lm)
        return calibration
    with sampling_bar() as progress:
        calibration.ids(lm, progress=progress)
    return calibration


@contextmanager
def sampling_bar():
    """Yields a `progress(tokens, total)` callback drawing tokens sampled, tokens/s and the time left."""
    import time

    columns = (TextColumn("sampling calibration text from the model"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task("sampling", total=None, rate="")
        started = time.perf_counter()

        def update(tokens: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            progress.update(task, completed=tokens, total=total,
                            rate=f"{tokens / elapsed:.0f} tokens/s" if elapsed > 0 else "")

        yield update


def load_model(spec: str, *, backend: str = "torch", **options):
    """The model for a command, opened with a status line (`runtime.open_model`'s options)."""
    from slmkit.logs import quiet_libraries
    from slmkit.runtime import choose_backend, open_model

    quiet_libraries()
    chosen = choose_backend(spec, backend)
    how = {"llamacpp": " with llama.cpp", "onnx": " with onnxruntime"}.get(
        chosen, " (a packaged GGUF is converted once, then cached)")
    with stderr.status(f"loading {spec}{how}"):
        return open_model(spec, backend=chosen, **options)


@contextmanager
def progress_bar(description: str, unit: str | None = None):
    """Yields a `progress(done, total)` callback drawing a bar on stderr; with a `unit` (tokens), its rate too."""
    import time

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task(description, total=None, rate="")
        started = time.perf_counter()

        def update(done: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            rate = f"{done / elapsed:.0f} {unit}/s" if unit and elapsed > 0 else ""
            progress.update(task, completed=done, total=total, rate=rate)

        yield update


def print_result(title: str, rows: dict, json_output: bool) -> None:
    """A command's outcome: a table titled `title`, or JSON."""
    if json_output:
        print_json(rows)
    else:
        print_table(title, rows)


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
