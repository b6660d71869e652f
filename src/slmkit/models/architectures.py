"""One table of what differs per architecture, keyed by transformers' model_type.

Each record holds what block-level compression needs (where a block keeps the layers it rewrites) and what GGUF
export needs (the llama.cpp architecture, its hyper-parameters, the weight rewrites it expects); None where a
family has no such support. The table lives in the lowest room so compress/ and exporters/ read the same record,
and names llama.cpp's architecture as a string so that only the exporter imports the optional `gguf` package.

The hyper-parameter functions live here too: they only read a transformers config, and keeping them in the
record (rather than a name looked up in the exporter) leaves no second table to keep in step with this one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slmkit.errors import SlmError
from slmkit.models.kinds import head_dim

# Canonical role -> module path inside one block (llama.cpp's TensorNameMap idea):
# methods ask for "the FFN output projection" and never string-match names.
LLAMA = {
    "attn_norm": "input_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
    "o": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm", "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn_up": "mlp.up_proj", "ffn_out": "mlp.down_proj",
}
# Gemma's RMSNorm multiplies by (1 + weight) and its MLP reads a different norm: no norm folding.
GEMMA3 = {**LLAMA, "attn_norm": None, "ffn_norm": None}
# Phi: one norm feeds attention and MLP in parallel, and GELU sits between fc1 and fc2: nothing folds exactly.
PHI = {"attn_norm": None, "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
       "o": "self_attn.dense", "ffn_norm": None, "ffn_in": ("mlp.fc1",), "ffn_up": None, "ffn_out": "mlp.fc2"}


@dataclass(frozen=True)
class GGUFArchitecture:
    """How one model_type is written as GGUF for llama.cpp.

    Args:
        arch: the name of llama.cpp's architecture id in `gguf.MODEL_ARCH` ("LLAMA"); the exporter resolves it.
        hparams: config -> {GGUFWriter.add_<key> suffix: value}.
        permute_qk: llama.cpp's llama graph rotates interleaved pairs, HF's Llama rotates halves:
            the rows of q/k are reordered so both compute the same thing.
        norm_plus_one: Gemma's RMSNorm scales by (1 + w), llama.cpp's by w.
        transposed: weights stored [in, out] (GPT-2's Conv1D), written transposed.
        square_query: llama.cpp sizes the query projection hidden x hidden, so heads x head_dim must
            equal the hidden size (llama and Gemma 3 read key_length instead).
    """

    arch: str
    hparams: Callable[[object], dict]
    permute_qk: bool = False
    norm_plus_one: bool = False
    transposed: bool = False
    square_query: bool = False


@dataclass(frozen=True)
class Architecture:
    """One model_type. Args: roles: canonical role -> module path in a block, for AWQ and width pruning
    (None: they refuse it). gguf: how GGUF export writes it (None: it refuses it)."""

    roles: dict | None = None
    gguf: GGUFArchitecture | None = None


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


_LLAMA_GGUF = GGUFArchitecture("LLAMA", _llama, permute_qk=True)
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(LLAMA, _LLAMA_GGUF),
    "mistral": Architecture(LLAMA, _LLAMA_GGUF),
    "qwen2": Architecture(LLAMA, GGUFArchitecture("QWEN2", _llama, square_query=True)),
    "gemma3_text": Architecture(GEMMA3, GGUFArchitecture("GEMMA3", _gemma3, norm_plus_one=True)),
    "gemma3": Architecture(GEMMA3),  # the multimodal wrapper: its text blocks compress; no GGUF export
    "phi": Architecture(PHI, GGUFArchitecture("PHI2", _phi2, square_query=True)),
    "gpt2": Architecture(gguf=GGUFArchitecture("GPT2", _gpt2, transposed=True, square_query=True)),
}


def supporting(field: str) -> list[str]:
    """The model_types whose record sets `field` ("roles" or "gguf"), sorted: what an error lists as supported."""
    return sorted(model_type for model_type, record in ARCHITECTURES.items() if getattr(record, field) is not None)


def roles_of(model) -> dict | None:
    """The role map of `model`'s text model, or None where block-level methods cannot rewrite it."""
    record = ARCHITECTURES.get(model.config.get_text_config().model_type)
    return record.roles if record else None
