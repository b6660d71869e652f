"""Check a model's files before any runtime opens them: a bad file is one line naming what is wrong.

A model file is untrusted input (downloaded from anywhere, or handed over by a program): the checks
here read only headers and sizes, so they run before a loader that could crash, hang or load half a model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from slmkit.errors import ModelLoadError

SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors library refuses headers over 100 MB too


def check_safetensors(path: Path) -> None:
    """The header is an 8-byte little-endian length, then that much JSON naming each tensor's dtype, shape
    and byte range; every range must lie inside the file (a truncated download fails here)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(SAFETENSORS_HEADER_LIMIT, size - 8):
            raise ModelLoadError(f"{path}: corrupt safetensors header (it says {length} bytes; the file has "
                                 f"{size - 8} after the length)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: corrupt safetensors header (not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: corrupt safetensors header (not a JSON object)")
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ModelLoadError(f"{path}: corrupt safetensors header (tensor {name!r} has no valid data_offsets)")
        if offsets[1] > data:
            raise ModelLoadError(f"{path}: truncated safetensors file (tensor {name!r} ends at byte "
                                 f"{offsets[1]} of {data})")
