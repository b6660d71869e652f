"""`slm prune MODEL --method ... --out DIR`: unstructured or N:M sparsity in one shot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt, load_model, print_json,
                               print_table, progress_bar, stderr)
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL


def prune_command(
    model: ModelArg = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", help="Directory for the pruned checkpoint.")] = ...,
    method: Annotated[str, typer.Option(help="magnitude | wanda | sparsegpt")] = "wanda",
    sparsity: Annotated[float | None, typer.Option(help="Fraction of weights removed per matrix, e.g. 0.5.")] = None,
    pattern: Annotated[str | None, typer.Option(help="N:M sparsity, e.g. 2:4 (keep N of every M).")] = None,
    calib: Annotated[Path | None, typer.Option(help="Calibration text (any file `slm eval` reads); "
                                               "default: text sampled from the model itself.")] = None,
    calib_samples: Annotated[int, typer.Option(help="Calibration sequences.")] = 128,
    calib_seq_len: Annotated[int, typer.Option(help="Tokens per calibration sequence.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed for picking calibration windows.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    json_output: JsonOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Zero out weights in every Linear layer of the model's blocks.

    Examples:
      slm prune --method wanda --sparsity 0.5 --calib wiki.txt --out out/wanda50
      slm prune ./model --method sparsegpt --pattern 2:4 --calib wiki.txt --out out/sgpt24
      slm prune --method magnitude --sparsity 0.3 --out out/mag30
    """
    from slmkit.compress import PRUNE_METHODS, calibration_ids, prune
    from slmkit.models.checkpoint import check_destination, save

    config_class = PRUNE_METHODS.get(method)
    if config_class is None:
        raise SlmError(f"unknown --method {method!r}; choose one of {', '.join(PRUNE_METHODS)}")
    config = config_class(sparsity=sparsity, pattern=pattern)
    check_destination(out, force)
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    calibration = None
    if config_class.method != "magnitude":
        with stderr.status("preparing calibration data" + ("" if calib else " (sampling from the model)")):
            calibration = calibration_ids(lm, calib, samples=calib_samples, seq_len=calib_seq_len, seed=seed)
    with progress_bar(f"{method} pruning, block") as progress:
        layers = prune(lm.model, config, calibration, progress=progress)
    total = sum(m["sparsity"] * _numel(m) for m in layers.values()) / sum(_numel(m) for m in layers.values())
    metrics = {"measured_sparsity": total, "layers": layers}
    record = {**config.to_dict(), "calib": str(calib) if calib else "self-generated",
              "calib_samples": calib_samples, "calib_seq_len": calib_seq_len}
    save(lm.model, out, lm.tokenizer, stage="prune", parent=model, config=record, seed=seed, metrics=metrics,
         force=force)
    result = {"model": model, "out": str(out), **record, "measured_sparsity": total,
              "pruned_layers": len(layers)}
    if json_output:
        print_json(result)
    else:
        print_table(f"{model} — pruned", result)


def _numel(layer_metrics: dict) -> int:
    rows, cols = layer_metrics["shape"]
    return rows * cols
