"""Tiny random models and a tiny tokenizer, built in seconds with no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

SAMPLE_TEXT = (Path(__file__).parents[1] / "src/slmkit/samples/small-models.txt").read_text()
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
VOCAB = 300
# SmolLM2-Instruct's template: ChatML turns, and a default system message when the conversation has none.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([SAMPLE_TEXT], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def chatml(tiny_tokenizer):
    """The tiny tokenizer with ChatML's turn markers as special tokens and SmolLM2-Instruct's template."""
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = SMOL_TEMPLATE
    return tokenizer


def tiny_config(model_type: str):
    import transformers as t

    small = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=128)
    return {
        "llama": lambda: t.LlamaConfig(**small, num_key_value_heads=2, architectures=["LlamaForCausalLM"]),
        "qwen2": lambda: t.Qwen2Config(**small, num_key_value_heads=2, architectures=["Qwen2ForCausalLM"]),
        "gemma3": lambda: t.Gemma3TextConfig(**small, num_key_value_heads=2, head_dim=8,
                                             architectures=["Gemma3ForCausalLM"]),
        "phi": lambda: t.PhiConfig(**small, architectures=["PhiForCausalLM"]),
        "gpt2": lambda: t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                     bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"]),
        "gpt_neo": lambda: t.GPTNeoConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                          attention_types=[[["global", "local"], 1]], window_size=16,
                                          max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
                                          architectures=["GPTNeoForCausalLM"]),
        "gptj": lambda: t.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                     n_positions=128, bos_token_id=0, eos_token_id=0,
                                     architectures=["GPTJForCausalLM"]),
        "bert": lambda: t.BertConfig(**small, architectures=["BertModel"]),
        "distilbert": lambda: t.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                 max_position_embeddings=128, architectures=["DistilBertModel"]),
        "mobilebert": lambda: t.MobileBertConfig(vocab_size=VOCAB, hidden_size=32, embedding_size=16,
                                                 true_hidden_size=16, intra_bottleneck_size=16,
                                                 intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                 num_feedforward_networks=1, max_position_embeddings=128,
                                                 architectures=["MobileBertModel"]),
        "t5": lambda: t.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 decoder_start_token_id=0, architectures=["T5ForConditionalGeneration"]),
    }[model_type]()


def tiny_model(model_type: str, seed: int = 0):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = tiny_config(model_type)
    torch.manual_seed(seed)
    architecture = config.architectures[0]
    encoder = architecture.endswith("Model") and "LMHead" not in architecture
    auto = AutoModelForSeq2SeqLM if model_type == "t5" else AutoModel if encoder else AutoModelForCausalLM
    return auto.from_config(config).eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from slmkit import save

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    save(tiny_model("llama"), out, tiny_tokenizer, stage="test")
    return out


def run_slm(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "slmkit.cli.main", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def assert_plan_written_exactly(lm, gguf_path: Path, types: dict[str, str]) -> None:
    """Every tensor of a planned GGUF is at its planned type (f16/f32 where the plan has none) and gguf-py reads
    back exactly the checkpoint's values (llama's q/k rows in the file's order)."""
    import gguf
    import numpy as np

    from slmkit.exporters.gguf import _permute_rows

    config = lm.model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(gguf_path).tensors}
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    for name, parameter in lm.model.named_parameters():
        tensor = tensors[names.get_name(name, try_suffixes=(".weight",))]
        expected = parameter.detach().numpy()
        type_name = types.get(name, "f32" if expected.ndim == 1 else "f16")
        assert tensor.tensor_type.name == type_name.upper(), name
        if type_name == "f16":  # a head the plan left out, held at its float values
            expected = expected.astype(np.float16).astype(np.float32)
        kind = tensor.name.split(".")[-2]
        if kind in heads:
            expected = _permute_rows(expected, heads[kind])
        stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
        np.testing.assert_array_equal(stored, expected, err_msg=name)
