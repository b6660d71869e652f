"""Where each architecture family keeps the layers that block-level methods rewrite.

Canonical role -> module path inside one block (llama.cpp's TensorNameMap idea):
methods ask for "the FFN output projection" and never string-match names.
"""

from __future__ import annotations

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

FAMILIES = {"llama": LLAMA, "qwen2": LLAMA, "mistral": LLAMA, "gemma3_text": GEMMA3, "gemma3": GEMMA3, "phi": PHI}


def family_of(model) -> dict | None:
    return FAMILIES.get(model.config.get_text_config().model_type)
