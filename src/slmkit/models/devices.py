"""Which device and dtype a model runs on: `--device auto|cpu|cuda|cuda:N|mps`, `--dtype ...`."""

from __future__ import annotations

from slmkit.errors import SlmError

DEVICES = "auto | cpu | cuda | cuda:N | mps"
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(name: str | None = "auto"):
    """A torch.device that is really there; `auto` is CUDA when present, else the CPU."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SlmError(f"unknown --device {name!r}; choose one of {DEVICES}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SlmError(f"--device {name}: no CUDA device here (torch {torch.__version__} sees none); "
                           "use --device cpu")
        if device.index is not None and device.index >= count:
            raise SlmError(f"--device {name}: there {'is' if count == 1 else 'are'} only {count} CUDA "
                           f"device{'s' if count > 1 else ''} (cuda:0..cuda:{count - 1})")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise SlmError(f"--device {name}: Apple's Metal (MPS) is not available here; use --device cpu")
        return device
    raise SlmError(f"unknown --device {name!r}; choose one of {DEVICES}")


def resolve_dtype(name: str | None, device) -> str:
    """The dtype's name; `auto` is float32 on the CPU (fastest there, and exact), bfloat16 on a GPU that has
    it, else float16."""
    import torch

    name = (name or "auto").strip().lower()
    if name not in DTYPES:
        raise SlmError(f"unknown --dtype {name!r}; choose one of {', '.join(DTYPES)}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float16" if device.type == "mps" else "float32"
