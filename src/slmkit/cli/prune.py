"""`slm prune MODEL --method ... --out DIR`: unstructured or N:M sparsity in one shot."""

from __future__ import annotations

from pathlib import Path

from slmkit.cli.common import ModelArg, print_result, progress_bar
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.verbs import prune
from slmkit.verbs.prune import PruneSettings


@with_config(PruneSettings, adds=("out", "force", "json"))
def prune_command(
    config: PruneSettings,
    model: ModelArg = DEFAULT_MODEL,
    *, out: Path, force: bool, json_output: bool,
) -> None:
    """Zero out weights in every Linear layer of the model's blocks.

    Examples:
      slm prune --method wanda --sparsity 0.5 --calib wiki.txt --out out/wanda50
      slm prune ./model --method sparsegpt --pattern 2:4 --calib wiki.txt --out out/sgpt24
      slm prune --method magnitude --sparsity 0.3 --out out/mag30
      slm prune --structured --depth 6 --calib wiki.txt --out out/short
      slm prune --structured --width ffn=1024,heads=6 --calib wiki.txt --out out/narrow
      slm prune --structured --target-params 100M --calib wiki.txt --out out/100m
    """
    result = prune.run(config, model, out, progress=progress_bar, force=force)
    title = "structured pruning" if config.structured else "pruned"
    print_result(f"{model} — {title}", {"model": model, "out": str(out), **result.summary}, json_output)
