"""What differs per architecture when a transformers decoder is written as GGUF.

Tensor names come from gguf's own TensorNameMap (the table llama.cpp's
converter uses); this file holds only the rest: the hyper-parameter keys each
llama.cpp architecture reads, and the few weight rewrites it expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gguf

from slmkit.errors import SlmError
from slmkit.models.kinds import head_dim


@dataclass(frozen=True)
class GGUFArchitecture:
    """One llama.cpp architecture.

    Args:
        arch: llama.cpp's architecture id.
        hparams: config -> {GGUFWriter.add_<key> suffix: value}.
        permute_qk: llama.cpp's llama graph rotates interleaved pairs, HF's Llama rotates halves:
            the rows of q/k are reordered so both compute the same thing.
        norm_plus_one: Gemma's RMSNorm scales by (1 + w), llama.cpp's by w.
        transposed: weights stored [in, out] (GPT-2's Conv1D), written transposed.
        square_query: llama.cpp sizes the query projection hidden x hidden, so heads x head_dim must
            equal the hidden size (llama and Gemma 3 read key_length instead).
    """

    arch: gguf.MODEL_ARCH
    hparams: Callable[[object], dict]
    permute_qk: bool = False
    norm_plus_one: bool = False
    transposed: bool = False
    square_query: bool = False


def rope_theta(config, layer_type: str = "full_attention") -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    if layer_type in parameters:  # per-layer-type parameters (Gemma 3)
        parameters = parameters[layer_type]
    rope_type = parameters.get("rope_type", "default")
    if rope_type != "default":
        raise SlmError(f"RoPE scaling {rope_type!r} is not supported by slm export --format gguf yet")
    theta = parameters.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise SlmError(f"{config.model_type} config has no rope_theta")
    return float(theta)


def _attention(config) -> dict:
    # key/value_length always: without them llama.cpp takes hidden_size / heads, which a model with heads
    # removed by structured pruning (or a config with its own head_dim) no longer has.
    return {"context_length": config.max_position_embeddings, "embedding_length": config.hidden_size,
            "block_count": config.num_hidden_layers, "feed_forward_length": config.intermediate_size,
            "head_count": config.num_attention_heads,
            "head_count_kv": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            "key_length": head_dim(config), "value_length": head_dim(config)}


def _llama(config) -> dict:
    return {**_attention(config), "rope_freq_base": rope_theta(config), "rope_dimension_count": head_dim(config),
            "layer_norm_rms_eps": config.rms_norm_eps, "vocab_size": config.vocab_size}


def _gemma3(config) -> dict:
    if config.query_pre_attn_scalar != config.head_dim:
        # llama.cpp scales Gemma 3 queries by 1/sqrt(head_dim) (the released sizes), with no key to say otherwise.
        raise SlmError(f"llama.cpp assumes query_pre_attn_scalar == head_dim for Gemma 3; this config has "
                       f"{config.query_pre_attn_scalar} and {config.head_dim}")
    sliding = [kind == "sliding_attention" for kind in config.layer_types]
    return {**_attention(config), "rope_freq_base": rope_theta(config, "full_attention"),
            "rope_freq_base_swa": rope_theta(config, "sliding_attention"),
            "layer_norm_rms_eps": config.rms_norm_eps, "sliding_window": config.sliding_window,
            "sliding_window_pattern": sliding}


def _phi2(config) -> dict:
    rotary_fraction = (getattr(config, "rope_parameters", None) or {}).get(
        "partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    return {**_attention(config), "rope_freq_base": rope_theta(config),
            "rope_dimension_count": int(rotary_fraction * head_dim(config)),
            "layer_norm_eps": config.layer_norm_eps}


def _gpt2(config) -> dict:
    return {"context_length": config.n_positions, "embedding_length": config.n_embd,
            "block_count": config.n_layer, "feed_forward_length": config.n_inner or 4 * config.n_embd,
            "head_count": config.n_head, "layer_norm_eps": config.layer_norm_epsilon}


ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "llama": GGUFArchitecture(gguf.MODEL_ARCH.LLAMA, _llama, permute_qk=True),
    "mistral": GGUFArchitecture(gguf.MODEL_ARCH.LLAMA, _llama, permute_qk=True),
    "qwen2": GGUFArchitecture(gguf.MODEL_ARCH.QWEN2, _llama, square_query=True),
    "gemma3_text": GGUFArchitecture(gguf.MODEL_ARCH.GEMMA3, _gemma3, norm_plus_one=True),
    "phi": GGUFArchitecture(gguf.MODEL_ARCH.PHI2, _phi2, square_query=True),
    "gpt2": GGUFArchitecture(gguf.MODEL_ARCH.GPT2, _gpt2, transposed=True, square_query=True),
}


def architecture_for(config) -> GGUFArchitecture:
    model_type = config.model_type
    if model_type not in ARCHITECTURES:
        raise SlmError(f"GGUF export does not support {model_type!r} models; supported: "
                       f"{', '.join(sorted(ARCHITECTURES))}")
    architecture = ARCHITECTURES[model_type]
    heads = config.num_attention_heads
    if architecture.square_query and heads * head_dim(config) != config.hidden_size:
        raise SlmError(f"llama.cpp runs {model_type} only with attention heads x head_dim = hidden size, and this "
                       f"model has {heads} x {head_dim(config)} for {config.hidden_size} (heads removed by "
                       "structured pruning?); prune its depth and FFN width only to export it to GGUF")
    return architecture
