"""llama.cpp's block formats (compress/blocks.py): the bytes read back bit for bit by gguf-py and llama.cpp,
rounding on fixed parameters that agrees however the columns are cut, and fits at least as good as llama.cpp's."""

import ctypes
import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from slmkit.compress.block_grid import BlockParams
from slmkit.compress.blocks import FORMATS, block_format
from slmkit.errors import SlmError

WIDTHS = [(name, columns) for name, fmt in FORMATS.items()
          for columns in ((96, 256, 512) if fmt.block_length == 32 else (256, 512))]


def gguf_type(name: str):
    return gguf.GGMLQuantizationType[name.upper()]


def bits(values: torch.Tensor) -> torch.Tensor:
    return values.contiguous().view(torch.int32)


def sample(rows: int, columns: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian weights with a pruned (all-zero) run, and a log-normal importance like an imatrix's."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator) * 0.02
    weight[0, :40] = 0
    return weight, torch.randn(columns, generator=generator).exp()


def same_params(first: BlockParams, second: BlockParams) -> bool:
    return all((mine is None and theirs is None) or torch.equal(mine, theirs)
               for mine, theirs in zip(vars(first).values(), vars(second).values()))


def weighted_error(weight, values, importance=None):
    error = (weight - values).square()
    return (error if importance is None else error * importance).sum().item()


def ggml_library():
    """llama-cpp-python's libggml-base, where ggml_quantize_chunk and the dequantize_row_* functions live."""
    spec = importlib.util.find_spec("llama_cpp")
    found = sorted(Path(spec.origin).parent.glob("lib/libggml-base.*")) if spec and spec.origin else []
    if not found:
        pytest.skip("llama-cpp-python's libggml-base is not installed")
    library = ctypes.CDLL(str(found[0]))
    if not hasattr(library, "ggml_quantize_chunk"):
        pytest.skip("this libggml-base has no ggml_quantize_chunk")
    return library


def llama_cpp_values(library, name: str, weight: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """llama.cpp's own quantization of weight with an imatrix, read back by gguf-py."""
    quantize = library.ggml_quantize_chunk
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                         ctypes.c_int64, ctypes.c_void_p]
    source = np.ascontiguousarray(weight.numpy(), dtype=np.float32)
    imatrix = np.ascontiguousarray(importance.numpy(), dtype=np.float32)
    block, size = gguf.GGML_QUANT_SIZES[gguf_type(name)]
    packed = np.zeros((weight.shape[0], weight.shape[1] // block * size), dtype=np.uint8)
    library.ggml_quantize_init(ctypes.c_int(int(gguf_type(name))))
    quantize(int(gguf_type(name)), source.ctypes.data, packed.ctypes.data, 0, weight.shape[0], weight.shape[1],
             imatrix.ctypes.data)
    return torch.from_numpy(gguf.quants.dequantize(packed, gguf_type(name)))


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("name,columns", WIDTHS)
def test_packed_bytes_read_back_as_the_rounded_values(name, columns, weighted):
    fmt = FORMATS[name]
    assert gguf.GGML_QUANT_SIZES[gguf_type(name)] == (fmt.block_length, fmt.bytes_per_block)
    weight, importance = sample(3, columns, seed=columns)
    params = fmt.fit(weight, importance if weighted else None)
    values, codes = fmt.round_columns(weight, params, 0)
    packed = fmt.pack(codes, params)
    assert packed.dtype == np.uint8 and packed.shape == (3, columns // fmt.block_length * fmt.bytes_per_block)
    read = torch.from_numpy(gguf.quants.dequantize(packed, gguf_type(name)))
    assert torch.equal(bits(read), bits(values))
    assert torch.equal(bits(fmt.dequantize(codes, params)), bits(values))
    by_block = [fmt.round_columns(weight[:, start:start + fmt.block_length], params, start)
                for start in range(0, columns, fmt.block_length)]
    assert torch.equal(bits(torch.cat([part[0] for part in by_block], dim=1)), bits(values))
    assert torch.equal(torch.cat([part[1] for part in by_block], dim=1), codes)
    # GPTQ's runs of columns cross sub-block and block edges.
    by_run = [fmt.round_columns(weight[:, start:start + 7], params, start)[0] for start in range(0, columns, 7)]
    assert torch.equal(bits(torch.cat(by_run, dim=1)), bits(values))
    # A checkpoint's fake-quantized weights and its parameters give back the codes.
    assert torch.equal(fmt.round_columns(values, params, 0)[1], codes)


@pytest.mark.parametrize("name", FORMATS)
def test_llama_cpp_reads_our_bytes_as_our_values(name):
    library = ggml_library()
    fmt = FORMATS[name]
    weight, importance = sample(4, 512, seed=1)
    params = fmt.fit(weight, importance)
    values, codes = fmt.round_columns(weight, params, 0)
    packed = np.ascontiguousarray(fmt.pack(codes, params))
    read = np.zeros(weight.numel(), dtype=np.float32)
    dequantize = getattr(library, f"dequantize_row_{name}")
    dequantize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    dequantize(packed.ctypes.data, read.ctypes.data, weight.numel())
    assert torch.equal(bits(torch.from_numpy(read).view_as(values)), bits(values))


@pytest.mark.parametrize("name", FORMATS)
def test_fitting_block_by_block_gives_the_whole_tensor_fit(name):
    """GPTQ fits each block when it reaches it; the parameters must not depend on how the tensor was cut."""
    fmt = FORMATS[name]
    weight, importance = sample(4, 512, seed=2)
    whole = fmt.fit(weight, importance)
    parts = [fmt.fit(weight[:, start:start + fmt.block_length], importance[start:start + fmt.block_length])
             for start in range(0, 512, fmt.block_length)]
    assert same_params(BlockParams.concat(parts), whole)
    assert same_params(BlockParams.concat([whole.blocks(0, 1), whole.blocks(1, 512 // fmt.block_length)]), whole)


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_fit_beats_gguf_py_reference_quantizer(name):
    fmt = FORMATS[name]
    weight, importance = sample(16, 512, seed=3)
    reference = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), gguf_type(name)),
                                                        gguf_type(name)))
    plain = fmt.round_columns(weight, fmt.fit(weight), 0)[0]
    assert weighted_error(weight, plain) <= weighted_error(weight, reference)
    weighted = fmt.round_columns(weight, fmt.fit(weight, importance), 0)[0]
    assert weighted_error(weight, weighted, importance) < 0.85 * weighted_error(weight, reference, importance)


@pytest.mark.parametrize("name", FORMATS)
def test_fit_is_as_good_as_llama_cpp_with_an_imatrix(name):
    library = ggml_library()
    fmt = FORMATS[name]
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(32, 1024, generator=generator)
    importance = torch.randn(1024, generator=generator).exp()
    ours = fmt.round_columns(weight, fmt.fit(weight, importance), 0)[0]
    theirs = llama_cpp_values(library, name, weight, importance)
    assert weighted_error(weight, ours, importance) <= 1.02 * weighted_error(weight, theirs, importance)


def test_bad_input_is_refused_with_one_line():
    with pytest.raises(SlmError, match="blocks of 256 values"):
        block_format("q4_K").fit(torch.randn(4, 96))
    with pytest.raises(SlmError, match=r"importance has shape \[32\] for a tensor of 64 columns"):
        block_format("q4_0").fit(torch.randn(4, 64), torch.ones(32))
    with pytest.raises(SlmError, match="importance holds negative"):
        block_format("q4_0").fit(torch.randn(4, 32), -torch.ones(32))
    with pytest.raises(SlmError, match="NaN"):
        block_format("q8_0").fit(torch.full((2, 32), float("nan")))
    with pytest.raises(SlmError, match="unknown block type 'q4_2'"):
        block_format("q4_2")
    params = block_format("q5_1").fit(torch.randn(2, 64))
    with pytest.raises(SlmError, match="outside the 64 columns"):
        block_format("q5_1").round_columns(torch.randn(2, 8), params, 60)
