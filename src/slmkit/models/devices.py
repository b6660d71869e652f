"""Which device and dtype a model runs on: `--device auto|cpu|cuda|cuda:N|mps`, `--dtype ...`."""

from __future__ import annotations

from slmkit.errors import SlmError

DEVICES = "auto | cpu | cuda | cuda:N | mps"
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(name="auto"):
    """A torch.device that is really there; `auto` (or None) is CUDA when present, else the CPU. A torch.device is
    one resolved already (a command resolves --device before the slow load): it is returned as it is."""
    import torch

    if isinstance(name, torch.device):
        return name
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


def check_trainer_device(name: str) -> None:
    """Refuse cuda:N where transformers' Trainer trains: it takes a device type and puts the model on the first
    GPU it sees, so the way to another GPU is CUDA_VISIBLE_DEVICES. `name`: a --device value or a torch.device."""
    name = str(name)
    if ":" in name:
        raise SlmError(f"--device {name}: the trainer takes whole device types; pick the GPU with "
                       f"CUDA_VISIBLE_DEVICES={name.split(':')[1]} and pass --device cuda")


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
