"""`slm prune MODEL --method ... --out DIR`: unstructured or N:M sparsity in one shot."""

from __future__ import annotations

from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, CalibOpt, CalibSamplesOpt, CalibSeqLenOpt, ForceOpt, JsonOpt,
                               ModelArg, OutOpt, SeedOpt, TrustRemoteCodeOpt, calibration_for, load_model,
                               print_json, print_table, progress_bar)
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL


def prune_command(
    model: ModelArg = DEFAULT_MODEL,
    out: OutOpt = ...,
    method: Annotated[str, typer.Option(help="magnitude | wanda | sparsegpt")] = "wanda",
    sparsity: Annotated[float | None, typer.Option(help="Fraction of weights removed per matrix, e.g. 0.5.")] = None,
    pattern: Annotated[str | None, typer.Option(help="N:M sparsity, e.g. 2:4 (keep N of every M).")] = None,
    calib: CalibOpt = None,
    calib_samples: CalibSamplesOpt = 128,
    calib_seq_len: CalibSeqLenOpt = 512,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
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
    from slmkit.compress import PRUNE_METHODS, prune
    from slmkit.models.checkpoint import check_destination, save

    config_class = PRUNE_METHODS.get(method)
    if config_class is None:
        raise SlmError(f"unknown --method {method!r}; choose one of {', '.join(PRUNE_METHODS)}")
    config = config_class(sparsity=sparsity, pattern=pattern)
    check_destination(out, force)
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    calibration = (None if config_class.method == "magnitude"
                   else calibration_for(lm, calib, calib_samples, calib_seq_len, seed))
    with progress_bar(f"{method} pruning, block") as progress:
        layers = prune(lm.model, config, calibration, progress=progress)
    sizes = {name: m["shape"][0] * m["shape"][1] for name, m in layers.items()}
    measured = sum(layers[name]["sparsity"] * size for name, size in sizes.items()) / sum(sizes.values())
    record = {**config.to_dict(), "calib": str(calib) if calib else "self-generated",
              "calib_samples": calib_samples, "calib_seq_len": calib_seq_len}
    save(lm.model, out, lm.tokenizer, stage="prune", parent=model, config=record, seed=seed,
         metrics={"measured_sparsity": measured, "layers": layers}, force=force)
    result = {"model": model, "out": str(out), **record, "measured_sparsity": measured, "pruned_layers": len(layers)}
    if json_output:
        print_json(result)
    else:
        print_table(f"{model} — pruned", result)
