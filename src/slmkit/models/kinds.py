"""What kind of model a checkpoint holds, how long a context it takes, and how wide its attention heads are."""

from __future__ import annotations

from slmkit.errors import ModelLoadError

ENCODER_TYPES = {"bert", "distilbert", "mobilebert", "roberta", "albert", "electra", "deberta", "deberta-v2",
                 "xlm-roberta"}
KIND_NAMES = {"causal-lm": "a causal language model", "encoder": "an encoder",
              "seq2seq": "a sequence-to-sequence model", "classifier": "a sequence classifier"}
KINDS = tuple(KIND_NAMES)


def check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")


def infer_kind(config: dict) -> str:
    """The kind a config.json's `architectures` (else its model_type) says."""
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classifier"
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal-lm"
    return "encoder" if config.get("model_type") in ENCODER_TYPES else "causal-lm"


def require_kind(spec: str, kind: str, found: str, model_type: str | None, task: str) -> None:
    """One-line refusal when a task gets the wrong kind of model."""
    if found != kind:
        what = f"{KIND_NAMES[found]} ({model_type})" if model_type else KIND_NAMES[found]
        raise ModelLoadError(f"{spec}: {task} needs {KIND_NAMES[kind]}; this is {what}")


def context_length(config) -> int | None:
    """The longest sequence a (transformers) config says its positions cover; None when it does not say."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def head_dim(config) -> int:
    """Values per attention head of a (text) config: its own `head_dim` when it sets one (Gemma 3, or heads
    removed by structured pruning), else hidden size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
