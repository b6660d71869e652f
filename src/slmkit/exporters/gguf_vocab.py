"""Tokenizer metadata for a GGUF file, so llama.cpp tokenizes and chats exactly as transformers does.

The vocabulary, merges and special ids come from gguf-py's readers; what they
leave open is decided here: each token's type (control tokens must be marked,
or llama.cpp never emits or parses them), which of llama.cpp's pre-tokenizers
matches the tokenizer's own splitting rule, and whether BOS/EOS are added.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gguf

from slmkit.errors import SlmError

# The regex a byte-level BPE tokenizer splits text with -> llama.cpp's pre-tokenizer that applies it.
SPLIT_REGEX_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


def bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization, or a one-line error."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # digits one by one, then GPT-2's rule (StarCoder and SmolLM tokenizers)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex in SPLIT_REGEX_PRE:
            return SPLIT_REGEX_PRE[regex]
    raise SlmError(f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:120]}) matches none llama.cpp is known to "
                   f"apply the same way (GPT-2, SmolLM, Llama 3, Qwen2); GGUF export would tokenize differently")


def _byte_level_vocab(tokenizer, size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and their types; ids the tokenizer lacks are padded as unused."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _adds(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether the tokenizer itself puts this special token at the start (or end) of every encoding."""
    if token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0 if first else -1] == token_id


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> str:
    """Write tokenizer.ggml.* and the chat template; returns the tokenizer model name written."""
    size = max(vocab_size, len(tokenizer))
    with tempfile.TemporaryDirectory(prefix="slm-gguf-tokenizer-") as tmp:
        directory = Path(tmp)
        tokenizer.save_pretrained(directory)
        tokenizer_json_path = directory / "tokenizer.json"
        tokenizer_json = json.loads(tokenizer_json_path.read_text()) if tokenizer_json_path.exists() else {}
        bpe = tokenizer_json.get("model", {})
        if (directory / "tokenizer.model").exists():
            model_name = "llama"  # SentencePiece: pieces with their scores and types
            vocab = gguf.vocab.SentencePieceVocab(directory)
            entries = list(vocab.all_tokens())
            entries += [(f"[PAD{i}]".encode(), -1000.0, gguf.TokenType.UNUSED) for i in range(len(entries), size)]
            writer.add_tokenizer_model(model_name)
            writer.add_tokenizer_pre("default")
            writer.add_token_list([text for text, _, _ in entries])
            writer.add_token_scores([score for _, score, _ in entries])
            writer.add_token_types([kind for _, _, kind in entries])
        elif bpe.get("type") == "BPE" and not bpe.get("byte_fallback") and \
                (tokenizer_json.get("decoder") or {}).get("type") == "ByteLevel":
            model_name = "gpt2"  # byte-level BPE: tokens in GPT-2's byte-to-unicode form, plus merges
            writer.add_tokenizer_model(model_name)
            writer.add_tokenizer_pre(bpe_pre_tokenizer(tokenizer_json))
            tokens, types = _byte_level_vocab(tokenizer, size)
            writer.add_token_list(tokens)
            writer.add_token_types(types)
        else:
            raise SlmError(f"GGUF export needs a byte-level BPE tokenizer.json or a SentencePiece tokenizer.model; "
                           f"{type(tokenizer).__name__} has neither")
        special = gguf.SpecialVocab(directory, load_merges=model_name == "gpt2", n_vocab=size)
    # Decided from the tokenizer's behaviour below, and the template straight from the tokenizer:
    # transformers 5 keeps it in chat_template.jinja, which SpecialVocab does not read.
    special.add_special_token = {}
    special.chat_template = None
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(_adds(tokenizer, tokenizer.bos_token_id, first=True))
    writer.add_add_eos_token(_adds(tokenizer, tokenizer.eos_token_id, first=False))
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)
    return model_name
