"""Faster torch inference on a CPU: fewer bytes of weights per generated token, a compiled decode step.

Decoding reads every weight once per token, so on a CPU it waits on memory far
more than on arithmetic. int8 stores each Linear's weights as int8 with one
scale per output channel (`Int8Linear`): a quarter of float32's bytes.
bfloat16 halves the bytes where the CPU has bf16 math. `--compile` runs the
single-token decode step through torch.compile (Inductor), which fuses the
dozens of small per-layer ops (norms, rotary embeddings, masks) eager PyTorch
runs one by one (int8 SmolLM2-135M, 2 threads: 41 -> 56 tok/s). These are
runtime choices for generation speed; a saved, calibrated model comes from
`slm quantize`, and a GGUF from `slm export`. `slm bench` and `slm generate`
decode on the same KV cache (`new_kv_cache`) and the same compiled step
(runtime.torch_backend), so bench measures what chat runs.
"""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import torch
from torch import nn

from slmkit.errors import ModelLoadError, SlmError, first_line
from slmkit.models.codes import recover_codes, row_chunks, stored_weight_scales
from slmkit.models.info import count_parameters
from slmkit.models.kinds import infer_kind, require_kind
from slmkit.models.layers import is_linear, weight_matrix
from slmkit.models.loading import _read_config, local_path
from slmkit.models.validate_checkpoint import check_config_fields

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")
INT8_MAX = 127  # symmetric: -127..127, zero is exact and both signs get the same grid
KERNEL_COLUMNS = 16  # rows of torch._weight_int8pack_mm's weights are read in blocks of this many columns


def check_weights(weights: str) -> None:
    if weights not in WEIGHT_FORMATS:
        raise SlmError(f"unknown --weights {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")


class Int8Linear(nn.Module):
    """A Linear with int8 weights, one float scale per output channel (symmetric, round to nearest).

    A few rows at a time (decoding) go to torch's int8 weight-only kernel `_weight_int8pack_mm`, which reads
    the int8 weights as they are and multiplies them with the activations rounded to bfloat16 (float32 ones
    take a slow path in it). A prompt's many rows are a matrix product the float32 GEMM does better: the
    weights are expanded to float32 for that one product.

    Written here rather than taken from a library because, measured on SmolLM2-135M with 2 threads, the
    alternatives were slower, could not be compiled, or lost quality: torchao 0.18's Int8WeightOnlyConfig
    decoded 13.9 tok/s compiled (it expands the weights to float32 on every step) against ~50 for this
    module; torch.ao's dynamic quantized Linear keeps its weights in a packed object torch.compile does not
    trace, and, like every int8-activation scheme tried, raised WikiText-2 perplexity (1024-token windows)
    far more: float32 22.55, this module 22.65 (+0.4 %), int8 activations per token via torch._int_mm
    23.47 (+4.1 %), torch.ao dynamic (per-tensor activations) 75.7.
    """

    decode_rows = 64  # up to this many rows the weight-only kernel; above, float32 GEMM (crossover: 64-512 rows)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, codes: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None):
        """From float `weight`, rounded onto this module's grid; or, given `codes` and `scale` ([out_features]),
        those (a calibrated checkpoint's; see `checkpoint_grid`). The prompt GEMM multiplies by the exact
        scales; the decode kernel, like every one of its products, by the scales rounded to bfloat16."""
        super().__init__()
        self.out_features, self.in_features = weight.shape  # [out_features, in_features]
        if codes is None:
            weight = weight.detach().float()
            absmax = torch.linalg.vector_norm(weight, float("inf"), dim=1)  # no |weight| copy, unlike abs().amax
            scale = (absmax / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
            codes = _round_onto(weight, scale)
        scale = scale.detach().reshape(-1).float().clone()
        # The kernel's AVX-512 path reads each row 16 columns at a time, past the end of a shorter last block
        # (wrong values, NaN or a crash: structured pruning leaves widths like 887). It gets zero-padded rows.
        self.pad_columns = -self.in_features % KERNEL_COLUMNS
        if self.pad_columns:
            padded = torch.zeros(self.out_features, self.in_features + self.pad_columns, dtype=torch.int8)
            padded[:, :self.in_features] = codes
            self.register_buffer("kernel_weight", padded, persistent=False)
            codes = padded[:, :self.in_features]  # the same bytes: `weight` is a view of the padded rows
        # `weight`, as in a Linear: code that reads `layer.weight.dtype` (T5 does) sees int8. Parameters
        # without gradients, so parameter counts and `.to(device)` see them like a Linear's.
        self.weight = nn.Parameter(codes if self.pad_columns else codes.contiguous(), requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        # The weight-only kernel takes bfloat16 scales; converted once here, not in every (compiled) step.
        self.register_buffer("weight_scale_bf16", scale.to(torch.bfloat16), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.decode_rows:
            kernel_rows, kernel_weight = rows.to(torch.bfloat16), self.weight
            if self.pad_columns:
                kernel_rows = torch.nn.functional.pad(kernel_rows, (0, self.pad_columns))
                kernel_weight = self.kernel_weight
            out = torch._weight_int8pack_mm(kernel_rows, kernel_weight, self.weight_scale_bf16).float()
        else:
            out = torch.nn.functional.linear(rows.float(), self.weight.float() * self.weight_scale[:, None])
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _round_onto(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 codes round(weight / scale), one scale per row."""
    codes = torch.empty(weight.shape, dtype=torch.int8)
    for start, end in row_chunks(weight):
        codes[start:end] = torch.div(weight[start:end], scale[start:end, None]).round_()
    return codes


class MemoryReturn:
    """Hands memory back to the kernel while a loaded model's float weights are replaced, so converting it
    needs little more than the float model itself (peak RAM is what `slm bench` reports).

    transformers maps a safetensors file, and every page read while converting stays counted in this
    process's memory until the whole mapping goes, after the last tensor is converted (SmolLM2-135M to int8:
    peak RAM 1.33 GB, more than float32's 0.96). MADV_PAGEOUT drops clean file pages; read again, they come
    back from the file, so a tensor's values never change. Weights that are not mapped (a compressed-tensors
    checkpoint's, decompressed on loading) are freed into glibc's heap, which keeps them until malloc_trim.
    No library does either; the standard library's mmap.madvise works only on mappings Python made.
    Linux (glibc) only; elsewhere nothing is handed back early.
    """

    PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)  # Linux >= 5.4; older kernels refuse it (EINVAL), harmlessly

    def __init__(self):
        self.ranges: list[tuple[int, int]] | None = []  # the file mappings' address ranges; None: unknown
        self.pending = 0  # bytes freed since the last trim
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    # address perms offset dev inode path: inode 0 is anonymous memory. Any file will do
                    # (a hub cache's checkpoint is a blob without a suffix): clean file pages come back.
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[4] != "0":
                        start, end = (int(address, 16) for address in fields[0].split("-"))
                        self.ranges.append((start, end))
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            self.madvise, self.malloc_trim = libc.madvise, libc.malloc_trim
        except (OSError, AttributeError):  # not Linux, or not glibc
            self.ranges, self.malloc_trim = None, None

    TRIM_BYTES = 64 << 20  # malloc_trim walks the whole heap (~2 ms here): once per this much freed

    def freed(self, nbytes: int | None = None) -> None:
        """After tensors of `nbytes` were dropped (None: at the end): return the heap's free pages."""
        self.pending += nbytes or 0
        if self.malloc_trim is not None and (nbytes is None or self.pending >= self.TRIM_BYTES):
            self.malloc_trim(0)
            self.pending = 0

    def is_mapped(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor`'s bytes are (or, where this cannot be told, may be) a mapped file's pages."""
        if self.ranges is None:
            return True
        start, end = _byte_span(tensor)
        return any(low <= start and end <= high for low, high in self.ranges)

    def release(self, tensor: torch.Tensor) -> None:
        """Drop the pages wholly inside `tensor`'s bytes, if they are a mapped file's."""
        if self.ranges is None or not self.is_mapped(tensor):
            return  # anonymous memory: dropping it would lose the values
        start, end = _byte_span(tensor)
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, end // page * page
        if last > first:
            self.madvise(first, last - first, self.PAGEOUT)


def _byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    return tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()


def quantize_int8(model: nn.Module, scales: dict[str, torch.Tensor] | None = None) -> tuple[int, int]:
    """Replace every Linear (GPT-2's Conv1D too, the LM head included) with an Int8Linear.

    `scales` (module name -> per-output-channel scale, from `checkpoint_scales`) keeps a layer's weights on
    its checkpoint's grid when they lie on it. Returns (layers replaced, layers kept on the checkpoint grid).
    """
    scales, memory = scales or {}, MemoryReturn()
    # Names, not modules: a list of the modules would keep every replaced float layer alive to the end.
    layers = [name for name, module in model.named_modules()
              if is_linear(module) and not isinstance(module, Int8Linear)]
    kept = 0
    for full_name in layers:
        parent_name, _, name = full_name.rpartition(".")
        parent = model.get_submodule(parent_name)
        child, scale = getattr(parent, name), scales.get(full_name)
        weight = weight_matrix(child)
        codes = checkpoint_grid(weight, scale)
        kept += codes is not None
        setattr(parent, name, Int8Linear(weight, child.bias, codes, scale if codes is not None else None))
        memory.release(child.weight)
        nbytes = child.weight.numel() * child.weight.element_size()
        del child, weight, codes  # the float weight goes, unless tied to a layer still in use
        memory.freed(nbytes)
    memory.freed()
    return len(layers), kept


def checkpoint_grid(weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor | None:
    """The int8 codes of `weight` on a per-output-channel `scale`, or None when its values are not on that grid.

    A calibrated checkpoint (GPTQ/AWQ, per-channel, symmetric, 8 bits or fewer) loads as float weights that are
    exactly codes x scale; re-rounding them onto Int8Linear's own absmax grid would add a second rounding
    error on top of the calibrated one.
    """
    if scale is None or scale.numel() != weight.shape[0] or not bool((scale != 0).all()):
        return None
    return recover_codes(weight, scale.reshape(-1, 1), tolerance=1e-3)  # float error << a step


def checkpoint_scales(directory) -> dict[str, torch.Tensor]:
    """Module name -> per-output-channel weight scale, for a compressed-tensors checkpoint's quantized layers
    (other checkpoints have none)."""
    if directory is None or not (Path(directory) / "config.json").is_file():
        return {}
    if (_read_config(Path(directory)).get("quantization_config") or {}).get("quant_method") != "compressed-tensors":
        return {}
    # Group-wise scales have a column per group, not one Int8Linear scale per row; an asymmetric grid (codes
    # minus a zero point) is not Int8Linear's symmetric one.
    return {module: scale.flatten() for module, (scale, zero_point) in stored_weight_scales(directory).items()
            if scale.shape[-1] == 1 and (zero_point is None or not bool(zero_point.any()))}


def _replace_each_tensor(model: nn.Module, chosen, convert) -> None:
    """Every parameter and buffer `chosen(tensor, memory)` picks gets `convert(its data)`, one at a time, the
    old data's memory handed back as it goes."""
    memory = MemoryReturn()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if chosen(tensor, memory):
                old, tensor.data = tensor.data, convert(tensor.data)
                memory.release(old)
                nbytes = old.numel() * old.element_size()
                del old
                memory.freed(nbytes)
    memory.freed()


def _own_remaining_tensors(model: nn.Module) -> None:
    """Copy the tensors int8 left alone (embeddings, norms) out of the checkpoint file's memory map, so the
    mapping goes: it stays as long as any tensor refers to it. Tensors already in memory of their own (a
    decompressed checkpoint's) stay where they are: a copy would only double them for a while.
    """
    _replace_each_tensor(model, lambda tensor, memory: tensor.dtype != torch.int8 and memory.is_mapped(tensor),
                         torch.Tensor.clone)


def _to_bfloat16(model: nn.Module) -> None:
    """`model.to(torch.bfloat16)` a tensor at a time, each float32 tensor's memory handed back as it goes
    (SmolLM2-135M: peak RAM 1.19 GB at once, more than float32's)."""
    _replace_each_tensor(model, lambda tensor, _: tensor.is_floating_point() and tensor.dtype != torch.bfloat16,
                         lambda data: data.to(torch.bfloat16))


def convert_weights(lm, weights: str):
    """Convert a runtime.torch_backend.TorchModel's weights in place; returns it."""
    check_weights(weights)
    if weights == "bfloat16":
        _to_bfloat16(lm.model)
    elif weights == "int8":
        lm.parameters = count_parameters(lm.model)[0]  # the model's, before a tied head gets its own copy
        _, lm.int8_checkpoint_layers = quantize_int8(lm.model, checkpoint_scales(lm.path))
        _own_remaining_tensors(lm.model)
    lm.weights = weights
    return lm


def static_cache_fits(model) -> bool:
    # transformers marks the architectures (model classes and so their instances) whose attention runs on a
    # preallocated (static) cache.
    return bool(getattr(model, "_can_compile_fullgraph", False))


def decode_compile_config():
    """How `--compile` compiles the single-token decode step; transformers' generate takes the same config.

    Prefill runs eagerly: a prompt's length changes from call to call, a decode step's shapes do not
    (on a static cache), so one compiled graph serves every token.
    """
    from transformers import CompileConfig

    # Checking every module attribute before each step cost ~1.5 ms a token (~10 % of a compiled step);
    # the model is not changed once it is loaded, so only the inputs are guarded.
    skip_module_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
    # dynamic=False: shapes that change (a longer cache) compile a new static graph. A dynamic-shape graph
    # served every cache size but took 73 s to compile instead of 47 and decoded no faster.
    options = {"guard_filter_fn": skip_module_guards} if skip_module_guards else None
    config = CompileConfig(dynamic=False, mode=None, options=options)
    config._compile_all_devices = True  # transformers compiles generate's decode steps on a CPU only when told
    return config


def check_compile_toolchain() -> None:
    """Before a slow load: Inductor writes C++ for the CPU and needs a compiler to build it."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as exc:  # InvalidCxxCompiler, or whatever probing the compiler raised
        raise SlmError(f"--compile needs a C++ compiler for torch.compile's CPU code ({first_line(exc)}); install "
                       "g++ (or set CXX) or run without --compile") from None


def check_compile_before_loading(spec: str) -> None:
    """What refuses `--compile` and can be told before a slow load: the compiler, and what a local
    checkpoint's config.json says (`enable_compile` checks the loaded model for the rest, e.g. a hub id)."""
    import transformers

    check_compile_toolchain()
    path = local_path(spec)
    if path is None or not path.is_dir():
        return
    try:
        config = _read_config(path)
        check_config_fields(path / "config.json", config, {})  # e.g. architectures that is not a list
    except ModelLoadError:
        return  # loading says what is wrong with it
    require_kind(spec, "causal-lm", infer_kind(config), config.get("model_type"), "--compile")
    classes = [getattr(transformers, name, None) for name in config.get("architectures") or []]
    if classes and classes[0] is not None and not static_cache_fits(classes[0]):
        raise SlmError(_no_static_cache(config.get("model_type")))


def _no_static_cache(model_type: str) -> str:
    return f"--compile needs a static KV cache, and transformers has none for {model_type}; run without --compile"


def enable_compile(lm):
    """Decode through torch.compile from now on (`slm bench/generate/chat --compile`); returns the TorchModel."""
    lm.require("causal-lm", "--compile")
    if not static_cache_fits(lm.model):
        raise SlmError(_no_static_cache(lm.config.model_type))
    lm.compiled = True
    return lm


def new_kv_cache(model, max_tokens: int):
    """The KV cache for one generation of at most `max_tokens` tokens (prompt included).

    A static cache is allocated once; the default DynamicCache appends each step's keys and values
    with torch.cat, copying every layer's whole cache on every token.
    """
    from transformers import DynamicCache, StaticCache

    config = model.config.get_text_config(decoder=True)
    if static_cache_fits(model):
        return StaticCache(config=config, max_cache_len=max_tokens)
    return DynamicCache(config=config)
