"""llama.cpp's importance matrix as a GGUF file (what `llama-imatrix` writes and `llama-quantize --imatrix`
reads), made from slmkit's calibration statistics, so users of llama.cpp's own tools quantize with them too.

The format, as the llama.cpp slmkit builds against reads it: `general.type` "imatrix", `imatrix.datasets` (the
calibration files), `imatrix.chunk_count` and `imatrix.chunk_size` (sequences and tokens each), and per matrix a
matmul reads, `<tensor>.in_sum2` (float32 [columns]: the sum over the calibration tokens of each input column's
square) and `<tensor>.counts` (float32 [1]: the tokens).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from slmkit.exporters.gguf import architecture_for, gguf_tensor_names
from slmkit.models.checkpoint import atomic_file


def write_imatrix(model, out: str | Path, input_squares: dict[str, torch.Tensor], *, sequences: int,
                  sequence_length: int, datasets: list[str]) -> Path:
    """Write the imatrix of `model` at `out` atomically: `input_squares` maps a parameter name to the mean
    square of each input column of the matmul that reads it, over `sequences` x `sequence_length` tokens."""
    out, tokens = Path(out), sequences * sequence_length
    names = gguf_tensor_names(model)
    with atomic_file(out) as temporary:
        writer = gguf.GGUFWriter(temporary, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[architecture_for(model.config).arch]])
        try:
            writer.add_type("imatrix")
            writer.add_array("imatrix.datasets", datasets)
            writer.add_uint32("imatrix.chunk_count", sequences)
            writer.add_uint32("imatrix.chunk_size", sequence_length)
            for name in sorted(input_squares, key=lambda name: names[name]):  # llama-imatrix's order
                sums = (input_squares[name].double() * tokens).float().numpy()
                writer.add_tensor(f"{names[name]}.in_sum2", sums.reshape(1, -1))
                writer.add_tensor(f"{names[name]}.counts", np.array([[tokens]], dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=False)
        finally:
            writer.close()
    return out
