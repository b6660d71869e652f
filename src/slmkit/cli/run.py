"""`slm run RECIPE.yaml` and `slm report RUN_DIR ...`: a recipe end to end, and what it gained and lost."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import JsonOpt, print_json, progress_bar, stderr
from slmkit.logs import quiet_libraries
from slmkit.pipeline.recipe import load_recipe
from slmkit.pipeline.report import collect_rows, headline, read_run, write_report
from slmkit.pipeline.run import run_recipe


def run_command(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML file, e.g. recipes/edge-chat.yaml.")],
    model: Annotated[str | None, typer.Option(help="Model to start from (overrides the recipe's).")] = None,
    data: Annotated[str | None, typer.Option(help="Calibration and evaluation text (overrides the recipe's); "
                                                  "none: data-free calibration, built-in evaluation text.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory [default: runs/<recipe name>].")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Run a recipe's stages in order; started again, it resumes after the last finished stage.

    Examples:
      slm run recipes/edge-chat.yaml
      slm run recipes/sparse-2of4.yaml --model ./my-model --data wiki.txt --out runs/sparse
    """
    quiet_libraries()  # before the recipe's configs import the libraries whose bars it silences
    parsed = load_recipe(recipe)
    directory = run_recipe(parsed, recipe_path=str(recipe), model=model, data=data, out=out,
                           say=lambda message: stderr.print(message), progress=progress_bar)
    md_path, html_path = write_report([directory])
    state = read_run(directory)
    numbers = headline(collect_rows(directory, state, ""))
    artefacts = [record["output"] for record in state["stages"].values()
                 if record["stage"] not in ("eval", "bench")]
    result = {"run": str(directory), "report_html": str(html_path), "report_md": str(md_path), **numbers,
              "artefacts": [str(directory / a) for a in artefacts]}
    gguf = [directory / a for a in artefacts if a.endswith(".gguf")]
    if json_output:
        print_json(result)
        return
    typer.echo(f"report: {html_path}")
    for path in gguf:
        typer.echo(f"gguf:   {path}")
        typer.echo(f"chat:   slm chat {path}")
        typer.echo(f"serve:  slm serve {path}")


def report_command(
    runs: Annotated[list[Path], typer.Argument(help="Run directories written by `slm run`.")],
    out: Annotated[Path | None, typer.Option(help="Where report.md/.html go (needed for several runs) "
                                                  "[default: the run directory].")] = None,
) -> None:
    """Write report.md and report.html for one run, or one comparing several.

    Examples: slm report runs/edge-chat; slm report runs/a runs/b --out reports/ab
    """
    md_path, html_path = write_report(runs, out)
    typer.echo(f"report: {html_path}\nmarkdown: {md_path}")
