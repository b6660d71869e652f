"""Ctrl-C: one line on stderr saying which command stopped and what it left behind, then exit 130.

Typer turns a KeyboardInterrupt into a silent `exit 130` inside its own main loop (typer.core._main), so a
handler around `app()` never sees it. Every command is built as an `InterruptibleCommand`, which catches it
first, where the command's name and its parsed options (its --out) are still known.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer
from typer.core import TyperCommand

from slmkit.models.checkpoint import checkpoint_dir

# These write their --out whole or not at all (a temporary name, then one rename), so an interrupted run
# wrote nothing there.
ATOMIC_OUTPUT = ("prune", "quantize", "export", "student", "finetune", "distill")
# These keep what they finished on purpose: running them again resumes.
RESUMABLE_OUTPUT = {"synth": "the records written so far stay in {out}",
                    "run": "the stages finished so far stay in {out}"}


def interrupted_line(command: str, params: dict) -> str:
    """What the user is told when `slm <command>` (called with `params`) is interrupted."""
    line = f"interrupted: slm {command} stopped"
    out = params.get("out")
    if command in RESUMABLE_OUTPUT:
        return f"{line}; {RESUMABLE_OUTPUT[command].format(out=out or 'the run directory')}; run it again to resume"
    if command not in ATOMIC_OUTPUT or out is None:
        return line
    line += f"; nothing was written to {out}"
    if command in ("finetune", "distill"):
        checkpoints = checkpoint_dir(Path(out))
        if any(checkpoints.glob("checkpoint-*")):  # saved by --save-every before the interruption
            line += f" (its last checkpoint is in {checkpoints}: the same command with --resume continues)"
    return line


class InterruptibleCommand(TyperCommand):
    """A Typer command that answers Ctrl-C with `interrupted_line` and exit status 130 (128 + SIGINT)."""

    def invoke(self, ctx):
        previous_hook = sys.unraisablehook

        def quiet_about_interrupts(unraisable) -> None:
            # A Ctrl-C that landed in a finalizer is not printed as "Exception ignored in ...": the training
            # loop raises it again (train.base.StopOnSignal) and the user is told once, below.
            if unraisable.exc_type is not KeyboardInterrupt:
                previous_hook(unraisable)

        sys.unraisablehook = quiet_about_interrupts
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if os.environ.get("SLM_DEBUG"):
                traceback.print_exc()
            print(interrupted_line(ctx.info_name, ctx.params), file=sys.stderr)
            raise typer.Exit(130) from None
        finally:
            sys.unraisablehook = previous_hook
