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
(`decode_step`), so bench measures what chat runs.
"""

from __future__ import annotations

import torch
from torch import nn

from slmkit.errors import SlmError

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")
INT8_MAX = 127  # symmetric: -127..127, zero is exact and both signs get the same grid


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

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight = weight.detach().float().contiguous()  # [out_features, in_features], rows contiguous for the kernel
        scale = (weight.abs().amax(dim=1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        self.out_features, self.in_features = weight.shape
        # `weight`, as in a Linear: code that reads `layer.weight.dtype` (T5 does) sees int8. Parameters
        # without gradients, so parameter counts and `.to(device)` see them like a Linear's.
        self.weight = nn.Parameter(torch.round(weight / scale[:, None]).to(torch.int8), requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        # The weight-only kernel takes bfloat16 scales; converted once here, not in every (compiled) step.
        self.register_buffer("weight_scale_bf16", scale.to(torch.bfloat16), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.decode_rows:
            out = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight, self.weight_scale_bf16).float()
        else:
            out = torch.nn.functional.linear(rows.float(), self.weight.float() * self.weight_scale[:, None])
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: nn.Module) -> int:
    """Replace every Linear (GPT-2's Conv1D too, the LM head included) with an Int8Linear; returns how many."""
    from slmkit.compress.layers import is_linear, weight_matrix

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_linear(child) and not isinstance(child, Int8Linear):
                setattr(parent, name, Int8Linear(weight_matrix(child), child.bias))
                replaced += 1
    return replaced


def _own_remaining_tensors(model: nn.Module) -> None:
    """Copy the tensors int8 left alone (embeddings, norms) out of the checkpoint file's memory map.

    transformers maps the safetensors file; the replaced float32 weights keep the whole mapping, and all
    the pages read while quantizing, resident until no tensor refers to it (SmolLM2-135M: 1.2 GB RSS
    instead of 0.79 GB).
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype != torch.int8:
                tensor.data = tensor.data.clone()


def convert_weights(lm, weights: str):
    """Convert a loaded torch model's weights in place; returns the LoadedModel."""
    check_weights(weights)
    if weights == "bfloat16":
        lm.model.to(torch.bfloat16)
    elif weights == "int8":
        from slmkit.models.info import count_parameters

        lm.extra["parameters"] = count_parameters(lm.model)[0]  # the model's, before a tied head gets its own copy
        quantize_int8(lm.model)
        _own_remaining_tensors(lm.model)
    lm.extra["weights"] = weights
    return lm


def static_cache_fits(model) -> bool:
    # transformers marks the architectures whose attention runs on a preallocated (static) cache.
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


def enable_compile(lm):
    """Decode through torch.compile from now on (`slm bench/generate/chat --compile`); returns the LoadedModel."""
    lm.require("causal-lm", "--compile")
    if not static_cache_fits(lm.model):
        raise SlmError(f"--compile needs a static KV cache, and transformers has none for "
                       f"{lm.config.model_type}; run without --compile")
    lm.extra["compile"] = True
    return lm


def chat_cache_tokens(lm, tokens: int) -> int:
    """The KV cache size for a chat turn of `tokens` tokens: exact in eager mode; compiled, the next power of
    two from 256 (capped by the context), so a conversation's growing prompts compile a few static graphs
    (256, 512, ... tokens, fewer than torch.compile's recompile limit of 8) instead of one every turn.

    A one-off generation and `slm bench` use the exact size: the whole cache is attended to on every step,
    and SmolLM2-135M at 640 tokens decoded 10-20 % slower on a cache of 1024.
    """
    if not lm.extra.get("compile"):
        return tokens
    from slmkit.evaluate.loglikelihood import context_length

    bucket = max(256, 1 << (tokens - 1).bit_length())
    return max(tokens, min(bucket, context_length(lm.config) or bucket))


def decode_step(lm):
    """What runs each single-token decode step: the model, or its compiled call after `enable_compile`."""
    return lm.model.get_compiled_call(decode_compile_config()) if lm.extra.get("compile") else lm.model


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
