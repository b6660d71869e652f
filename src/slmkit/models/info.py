"""What a model is: architecture, parameter counts, shape, size on disk, memory to run."""

from __future__ import annotations

from pathlib import Path

import torch

from slmkit.models.kinds import context_length


def count_parameters(model) -> tuple[int, int]:
    """(total, non-embedding); tied tensors count once, as model.parameters() yields them once."""
    total = sum(p.numel() for p in model.parameters())
    embedding_ids = {id(p) for module in model.modules() if isinstance(module, torch.nn.Embedding)
                     for p in module.parameters()}
    embedding = sum(p.numel() for p in model.parameters() if id(p) in embedding_ids)
    return total, total - embedding


def bytes_on_disk(path: Path | None) -> int | None:
    if path is None:
        return None
    if path.is_file():
        return path.stat().st_size
    weights = (".safetensors", ".bin", ".gguf", ".onnx", ".pte")
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in weights)


def _first(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def model_info(lm) -> dict:
    """The numbers `slm info` prints.

    Estimated memory = weights in their dtype + a full-context KV cache for one
    sequence (2 x layers x kv-heads x head-dim x context x bytes per value).
    """
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    total, non_embedding = count_parameters(lm.model)
    dtype = next(lm.model.parameters()).dtype
    element_size = torch.empty((), dtype=dtype).element_size()
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _first(config, "hidden_size", "n_embd", "d_model", "dim")
    heads = _first(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    kv_heads = _first(config, "num_key_value_heads") or heads
    head_dim = _first(config, "head_dim", "d_kv") or (hidden // heads if hidden and heads else None)
    context = context_length(config)
    kv_cache = (2 * layers * kv_heads * head_dim * context * element_size
                if lm.kind == "causal-lm" and all((layers, kv_heads, head_dim, context)) else 0)
    return {
        "model": lm.spec,
        "path": str(lm.path) if lm.path else None,
        "kind": lm.kind,
        "architecture": (lm.config.architectures or [type(lm.model).__name__])[0],
        "model_type": lm.config.model_type,
        "parameters": total,
        "non_embedding_parameters": non_embedding,
        "layers": layers,
        "hidden_size": hidden,
        "attention_heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": _first(config, "vocab_size"),
        "context_length": context,
        "dtype": str(dtype).removeprefix("torch."),
        "bytes_on_disk": bytes_on_disk(lm.path),
        "estimated_memory_bytes": total * element_size + kv_cache,
    }
