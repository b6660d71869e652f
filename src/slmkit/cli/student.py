"""`slm student TEACHER --out DIR`: a smaller model to distill the teacher into."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, CalibCacheOpt, CalibOpt, CalibSamplesOpt, CalibSeqLenOpt, ForceOpt,
                               JsonOpt, ModelArg, OutOpt, SeedOpt, TrustRemoteCodeOpt, calibration_for,
                               calibration_options, load_model, print_json, print_table, progress_bar)
from slmkit.cli.prune import parse_width
from slmkit.models.catalog import DEFAULT_MODEL


def student_command(
    teacher: ModelArg = DEFAULT_MODEL,
    out: OutOpt = ...,
    layers: Annotated[str | None, typer.Option(help="Keep these blocks, with their weights: 0,2,4.")] = None,
    depth: Annotated[int | None, typer.Option(help="Keep this many blocks, evenly spaced from the first.")] = None,
    config: Annotated[Path | None, typer.Option(help="A config.json of the student: fresh weights, the "
                                                     "teacher's tokenizer and vocabulary.")] = None,
    width: Annotated[str | None, typer.Option(help="Structured: what each block keeps, e.g. ffn=1024,heads=6.")] = None,
    target_params: Annotated[str | None, typer.Option(help="Structured: the student's size, e.g. 90M.")] = None,
    calib: CalibOpt = None,
    calib_samples: CalibSamplesOpt = None,
    calib_seq_len: CalibSeqLenOpt = None,
    seed: SeedOpt = 0,
    calib_cache: CalibCacheOpt = "on",
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Make a student: the teacher's blocks kept or spaced out, a fresh config, or structured pruning.

    Examples:
      slm student minilm-l6 --layers 0,2,4 --out out/student3
      slm student bert-base --depth 6 --out out/distilbert-like
      slm student --target-params 100M --calib wiki.txt --out out/student100m
      slm student --config small.json --out out/fresh
    """
    import slmkit
    from slmkit.compress.structured import parse_count
    from slmkit.distill import StudentConfig, parse_layers
    from slmkit.models.checkpoint import check_destination
    from slmkit.models.loading import local_path

    settings = StudentConfig(layers=parse_layers(layers) if layers is not None else None, depth=depth,
                             config=str(config) if config else None, width=parse_width(width) or None,
                             target_params=parse_count(target_params), seed=seed)
    calibration = calibration_options(calib, calib_samples, calib_seq_len, seed, calib_cache)
    check_destination(out, force, reads=[local_path(teacher), config, calib])
    lm = load_model(teacher, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device="cpu",
                    dtype="float32")
    structured = settings.structured()
    if structured is None:  # blocks kept or a fresh config: nothing to score, seconds
        report = slmkit.student(lm, settings)
    else:
        calibration = calibration_for(lm, structured, calibration)
        with progress_bar("scoring blocks, channels and heads") as progress:
            report = slmkit.student(lm, settings, calibration, progress=progress)
    slmkit.save(lm, out, stage="student", parent=teacher, config=settings.to_dict(), metrics=report, force=force)
    summary = {"teacher": teacher, "out": str(out), **report}
    if json_output:
        print_json(summary)
    else:
        print_table(f"{teacher} — student", summary)
