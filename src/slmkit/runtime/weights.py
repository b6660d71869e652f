"""Faster torch inference on a CPU: fewer bytes of weights per generated token, no cache copies.

Decoding reads every weight once per token, so on a CPU it waits on memory far
more than on arithmetic. int8 uses torch's dynamic quantization (int8 weights,
each token's activations quantized on the fly, fbgemm/oneDNN kernels): a
quarter of float32's bytes. bfloat16 halves them where the CPU has bf16 math.
These are runtime choices for generation speed; a saved, calibrated model comes
from `slm quantize`, and a GGUF from `slm export`. `slm bench` and `slm generate`
decode on the same KV cache (`new_kv_cache`), so bench measures what chat runs.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from slmkit.errors import SlmError

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")


def check_weights(weights: str) -> None:
    if weights not in WEIGHT_FORMATS:
        raise SlmError(f"unknown --weights {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")


def convert_weights(lm, weights: str):
    """Convert a loaded torch model's weights in place; returns the LoadedModel."""
    check_weights(weights)
    if weights == "bfloat16":
        lm.model.to(torch.bfloat16)
    elif weights == "int8":
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            quantize_dynamic(lm.model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    lm.extra["weights"] = weights
    return lm


def static_cache_fits(model) -> bool:
    # transformers marks the architectures whose attention runs on a preallocated (static) cache.
    return bool(getattr(model, "_can_compile_fullgraph", False))


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
