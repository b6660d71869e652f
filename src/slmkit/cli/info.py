"""`slm info MODEL`: architecture, parameter counts, shape, size, memory."""

from __future__ import annotations

from slmkit.cli.common import (DeviceOpt, DtypeOpt, AllowPickleOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt, human_bytes, load_model,
                               print_json, print_table)
from slmkit.models.catalog import DEFAULT_MODEL


def info(model: ModelArg = DEFAULT_MODEL, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
         json_output: JsonOpt = False, allow_pickle: AllowPickleOpt = False,
         trust_remote_code: TrustRemoteCodeOpt = False) -> None:
    """Show what a model is and what it needs to run.

    Examples: slm info; slm info ./my-checkpoint --json; slm info model.gguf
    """
    from slmkit.models.info import model_info

    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device=device,
                    dtype=dtype)
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
