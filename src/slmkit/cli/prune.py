"""`slm prune MODEL --method ... --out DIR`: unstructured or N:M sparsity in one shot."""

from __future__ import annotations

from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, CalibCacheOpt, CalibOpt, CalibSamplesOpt, CalibSeqLenOpt,
                               ComputeDeviceOpt, ForceOpt, JsonOpt, ModelArg, OutOpt, SeedOpt, TrustRemoteCodeOpt,
                               calibration_for, calibration_options, load_model, print_json, print_table,
                               progress_bar)
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL


def prune_command(
    model: ModelArg = DEFAULT_MODEL,
    out: OutOpt = ...,
    method: Annotated[str, typer.Option(help="magnitude | wanda | sparsegpt")] = "wanda",
    sparsity: Annotated[float | None, typer.Option(help="Fraction of weights removed per matrix, e.g. 0.5.")] = None,
    pattern: Annotated[str | None, typer.Option(help="N:M sparsity, e.g. 2:4 (keep N of every M).")] = None,
    structured: Annotated[bool, typer.Option("--structured", help="Remove whole blocks, channels and heads: "
                                             "a smaller dense model.")] = False,
    depth: Annotated[int, typer.Option(help="--structured: blocks to remove.")] = 0,
    width: Annotated[str | None, typer.Option(
        help="--structured: what to keep per block, e.g. ffn=1024,heads=6.")] = None,
    target_params: Annotated[str | None, typer.Option(help="--structured: total size wanted, e.g. 90M.")] = None,
    calib: CalibOpt = None,
    calib_samples: CalibSamplesOpt = None,
    calib_seq_len: CalibSeqLenOpt = None,
    seed: SeedOpt = 0,
    calib_cache: CalibCacheOpt = "on",
    device: ComputeDeviceOpt = "auto",
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
      slm prune --structured --depth 6 --calib wiki.txt --out out/short
      slm prune --structured --width ffn=1024,heads=6 --calib wiki.txt --out out/narrow
      slm prune --structured --target-params 100M --calib wiki.txt --out out/100m
    """
    import slmkit
    from slmkit.models.checkpoint import check_destination
    from slmkit.models.loading import local_path
    from slmkit.models.devices import resolve_device

    if structured:
        from slmkit.compress.structured import StructuredConfig, parse_count

        config = StructuredConfig(depth=depth, target_params=parse_count(target_params), **parse_width(width))
        title, bar = "structured pruning", "scoring blocks, channels and heads"
    elif depth or width or target_params:
        raise SlmError("--depth, --width and --target-params need --structured")
    else:
        from slmkit.compress.prune import prune_config

        config = prune_config(method, sparsity=sparsity, pattern=pattern)
        title, bar = "pruned", f"{method} pruning, block"
    calibration = calibration_options(calib, calib_samples, calib_seq_len, seed, calib_cache)
    compute_device = resolve_device(device)  # a device that is not there: before the slow load
    check_destination(out, force, reads=[local_path(model), calib])
    # float32 on the CPU: what compression rewrites (a block at a time goes to --device)
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device="cpu",
                    dtype="float32")
    calibration = calibration_for(lm, config, calibration)
    with progress_bar(bar) as progress:
        result = slmkit.prune(lm, config, calibration, device=compute_device, progress=progress)
    slmkit.save(lm, out, result=result, parent=model, force=force)
    result = {"model": model, "out": str(out), **result.summary}
    if json_output:
        print_json(result)
    else:
        print_table(f"{model} — {title}", result)


def parse_width(width: str | None) -> dict[str, int]:
    if not width:
        return {}
    parsed = {}
    for part in width.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("ffn", "heads") or not value.strip().isdigit():
            raise SlmError(f"--width {width!r}: expected ffn=N and/or heads=N, e.g. ffn=1024,heads=6")
        parsed[key.strip()] = int(value)
    return parsed
