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

from slmkit.verbs.opening import open_runtime


stdout = Console()
stderr = Console(stderr=True)
# Progress bars draw on a terminal only: elsewhere (a log, a pipe) rich leaves an empty line where the
# transient bar was, before whatever is printed next (an error line too).

MODEL_HELP = "Alias (see `slm models`), local HF directory, .gguf file or hub id"
ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP + ".")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Directory for the new checkpoint.")]
ForceOpt = Annotated[bool, typer.Option(help="Replace a non-empty --out.")]


@contextmanager
def status_line(description: str, unit: str | None = None):
    """A progress factory (slmkit.verbs.ProgressFactory) that shows `description` beside a spinner: for a step
    with no count, as opening a model is."""
    with stderr.status(description):
        yield lambda done, total: None


def load_model(spec: str, *, backend: str = "torch", **options):
    """The model for a command, opened with a status line (`verbs.opening.open_runtime`'s options)."""
    return open_runtime(spec, status_line, backend=backend, **options)


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
