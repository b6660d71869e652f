"""The `slm` command: wiring only; each command lives in its own module."""

from __future__ import annotations

import os
import sys
from importlib import import_module

import typer

from slmkit.cli import generate, info, models_cmd, run, serve
from slmkit.cli.interrupt import InterruptibleCommand
from slmkit.errors import SlmError
from slmkit.logs import quiet_torchao
from slmkit.verbs import VERBS

app = typer.Typer(
    name="slm",
    help="Make language models small, make them yours, prove it, and run them locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("models")(models_cmd.models)
app.command("info")(info.info)
for verb in VERBS.values():  # each verb's command is `<name>_command` in slmkit.cli.<name> (slmkit.verbs.Verb)
    app.command(verb.name)(getattr(import_module(f"slmkit.cli.{verb.name}"), f"{verb.name}_command"))
app.command("generate")(generate.generate_command)
app.command("chat")(generate.chat_command)
app.command("serve")(serve.serve_command)
app.command("run")(run.run_command)
app.command("report")(run.report_command)
for registered in app.registered_commands:
    registered.cls = InterruptibleCommand  # Ctrl-C: one line saying what stopped (Typer alone exits 130 silently)


def main() -> None:
    """Run the CLI; user errors become one line on stderr (SLM_DEBUG=1 shows the traceback)."""
    quiet_torchao()
    try:
        app()
    except SlmError as exc:
        if os.environ.get("SLM_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
