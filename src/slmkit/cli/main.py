"""The `slm` command: wiring only; each command lives in its own module."""

from __future__ import annotations

import os
import sys

import typer

from slmkit.cli import bench, eval, export, finetune, generate, info, models_cmd, prune, quantize, run
from slmkit.cli import distill, serve, student, synth
from slmkit.cli.interrupt import InterruptibleCommand

app = typer.Typer(
    name="slm",
    help="Make language models small, make them yours, prove it, and run them locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("models")(models_cmd.models)
app.command("info")(info.info)
app.command("eval")(eval.eval_command)
app.command("bench")(bench.bench_command)
app.command("prune")(prune.prune_command)
app.command("quantize")(quantize.quantize_command)
app.command("export")(export.export_command)
app.command("finetune")(finetune.finetune_command)
app.command("synth")(synth.synth_command)
app.command("student")(student.student_command)
app.command("distill")(distill.distill_command)
app.command("generate")(generate.generate_command)
app.command("chat")(generate.chat_command)
app.command("serve")(serve.serve_command)
app.command("run")(run.run_command)
app.command("report")(run.report_command)
for registered in app.registered_commands:
    registered.cls = InterruptibleCommand  # Ctrl-C: one line saying what stopped (Typer alone exits 130 silently)


def main() -> None:
    """Run the CLI; user errors become one line on stderr (SLM_DEBUG=1 shows the traceback)."""
    from slmkit.errors import SlmError

    try:
        app()
    except SlmError as exc:
        if os.environ.get("SLM_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
