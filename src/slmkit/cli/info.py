"""`slm info MODEL`: architecture, parameter counts, shape, size, memory."""

from __future__ import annotations

from dataclasses import dataclass

from slmkit.cli.common import ModelArg, human_bytes, load_model, print_json, print_table
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.settings import OpenSettings, PlacementSettings


@dataclass(kw_only=True)
class InfoSettings(PlacementSettings, OpenSettings):
    """`slm info` opens the model with torch (a GGUF is converted), where and in what precision it will run."""


@with_config(InfoSettings, adds=("json",))
def info(settings: InfoSettings, model: ModelArg = DEFAULT_MODEL, *, json_output: bool) -> None:
    """Show what a model is and what it needs to run.

    Examples: slm info; slm info ./my-checkpoint --json; slm info model.gguf
    """
    from slmkit.models.info import model_info  # torch: kept out of CLI start-up

    lm = load_model(model, device=settings.device, dtype=settings.dtype, **settings.open_options())
    result = model_info(lm)
    if json_output:
        print_json(result)
        return
    shown = dict(result)
    for key in ("bytes_on_disk", "estimated_memory_bytes"):
        shown[key] = human_bytes(result[key])
    for key in ("parameters", "non_embedding_parameters"):
        shown[key] = f"{result[key]:,}"
    print_table(model, shown)
