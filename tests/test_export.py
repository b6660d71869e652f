"""GGUF export: llama.cpp computes what transformers computes, calibrated values survive bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SAMPLE_TEXT, run_slm, tiny_config, tiny_model

from slmkit import load, save
from slmkit.errors import SlmError
from slmkit.exporters import export_gguf
from slmkit.exporters.gguf import _permute_rows

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from slmkit.runtime.llamacpp import open_gguf  # noqa: E402

MULTILINGUAL = "Small models run offline. Kleine Modelle laufen lokal — ¿también en español? 小さなモデル 🙂 x=42;\n\tok"


def saved_tiny(model_type, tmp_path, tokenizer, seed=0):
    directory = tmp_path / model_type
    model = tiny_model(model_type, seed=seed)
    if model_type == "gemma3":  # as the released Gemma 3 sizes (and llama.cpp) have it
        model.config.query_pre_attn_scalar = model.config.head_dim
    save(model, directory, tokenizer, stage="test")
    return directory


def llama_cpp_logits(path, ids):
    llm = open_gguf(path, n_ctx=64, logits_all=True, n_threads=2)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "phi", "gemma3"])
def test_f32_export_gives_transformers_logits_in_llama_cpp(model_type, tmp_path, tiny_tokenizer):
    lm = load(str(saved_tiny(model_type, tmp_path, tiny_tokenizer)))
    written = export_gguf(lm, tmp_path / "model.gguf", "f32")
    ids = tiny_tokenizer(SAMPLE_TEXT)["input_ids"][:40]
    with torch.no_grad():
        expected = lm.model(torch.tensor([ids])).logits[0].numpy()
    assert written.tensors == len(list(lm.model.parameters()))
    # llama.cpp keeps its KV cache in float16: agreement to ~1e-4, not float32 rounding
    np.testing.assert_allclose(llama_cpp_logits(written.path, ids), expected, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "phi", "gemma3"])
def test_a_structured_pruned_model_exports_its_smaller_shape(model_type, tmp_path, tiny_tokenizer):
    from slmkit.compress.structured import StructuredConfig, prune_structured

    model = tiny_model(model_type)
    if model_type == "gemma3":
        model.config.query_pre_attn_scalar = model.config.head_dim
    # llama.cpp's qwen2 and phi2 take no other head width: there, heads stay (and a pruned one is refused).
    pruned_heads = model_type in ("llama", "gemma3")
    heads = 2 if pruned_heads else model.config.num_attention_heads
    report = prune_structured(model, StructuredConfig(depth=1, ffn=40, heads=2 if pruned_heads else None),
                              torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0)))
    assert report["ffn"] == 40 and model.config.num_attention_heads == heads  # 40: not 32-wide GGUF blocks
    directory = save(model, tmp_path / "pruned", tiny_tokenizer, stage="structured")
    lm = load(str(directory))
    written = export_gguf(lm, tmp_path / "pruned.gguf", "f32")
    fields = gguf.GGUFReader(written.path).fields
    arch = fields["general.architecture"].contents()
    assert fields[f"{arch}.block_count"].contents() == 1
    assert fields[f"{arch}.feed_forward_length"].contents() == 40
    assert fields[f"{arch}.attention.head_count"].contents() == heads
    ids = tiny_tokenizer(SAMPLE_TEXT)["input_ids"][:40]
    with torch.no_grad():
        expected = lm.model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(llama_cpp_logits(written.path, ids), expected, atol=1e-3, rtol=1e-2)


def test_gguf_export_refuses_pruned_heads_where_llama_cpp_cannot_run_them(tmp_path, tiny_tokenizer):
    from slmkit.compress.structured import StructuredConfig, prune_structured

    model = tiny_model("qwen2")
    prune_structured(model, StructuredConfig(heads=2), torch.randint(0, 300, (4, 16)))
    lm = load(str(save(model, tmp_path / "pruned", tiny_tokenizer, stage="structured")))
    with pytest.raises(SlmError, match=r"llama.cpp runs qwen2 only with attention heads x head_dim = hidden size"):
        export_gguf(lm, tmp_path / "pruned.gguf", "f32")
    assert not (tmp_path / "pruned.gguf").exists()


@pytest.mark.parametrize("quant, tolerance", [("q8_0", 0.02), ("q4_0", 0.3), ("f16", 0.005)])
def test_quantized_exports_load_and_generate(quant, tolerance, tmp_path, tiny_tokenizer):
    lm = load(str(saved_tiny("llama", tmp_path, tiny_tokenizer)))
    written = export_gguf(lm, tmp_path / f"model.{quant}.gguf", quant)
    reader = gguf.GGUFReader(written.path)
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == quant.upper() and types["blk.0.attn_norm.weight"] == "F32"
    ids = tiny_tokenizer(SAMPLE_TEXT)["input_ids"][:24]
    with torch.no_grad():
        expected = lm.model(torch.tensor([ids])).logits[0].numpy()
    got = llama_cpp_logits(written.path, ids)
    assert np.abs(got - expected).max() < tolerance * np.abs(expected).max()
    llm = open_gguf(written.path, n_ctx=64, n_threads=2)
    completion = llm.create_completion("Small models", max_tokens=8, temperature=0)
    assert completion["usage"]["completion_tokens"] > 0


def test_gptq_q4_0_target_exports_the_exact_calibrated_values(tmp_path, tiny_tokenizer):
    source = saved_tiny("llama", tmp_path, tiny_tokenizer)
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT * 4)
    quantized = tmp_path / "gptq"
    result = run_slm("quantize", str(source), "--method", "gptq", "--target", "gguf-q4_0", "--calib", str(calib),
                     "--calib-samples", "4", "--calib-seq-len", "32", "--out", str(quantized), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["group_size"] == 32
    lm = load(str(quantized))
    written = export_gguf(lm, tmp_path / "gptq.q4_0.gguf", "q4_0")
    assert len(written.exact_layers) == 7 * 2 and not written.requantized_layers

    config = lm.model.config
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(written.path).tensors}
    for index, block in enumerate(lm.model.model.layers):
        for gguf_kind, module, heads in [("attn_q", block.self_attn.q_proj, config.num_attention_heads),
                                         ("attn_k", block.self_attn.k_proj, config.num_key_value_heads),
                                         ("attn_v", block.self_attn.v_proj, None),
                                         ("ffn_down", block.mlp.down_proj, None)]:
            tensor = tensors[f"blk.{index}.{gguf_kind}.weight"]
            assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_0
            weight = module.weight.detach().numpy()
            expected = _permute_rows(weight, heads) if heads else weight
            stored = gguf.quants.dequantize(tensor.data, gguf.GGMLQuantizationType.Q4_0).reshape(weight.shape)
            np.testing.assert_array_equal(stored, expected)


def test_a_non_gguf_grid_is_re_rounded_and_reported(tmp_path, tiny_tokenizer):
    source = saved_tiny("llama", tmp_path, tiny_tokenizer)
    quantized = tmp_path / "rtn"
    result = run_slm("quantize", str(source), "--method", "rtn", "--group-size", "32", "--out", str(quantized))
    assert result.returncode == 0, result.stderr
    written = export_gguf(load(str(quantized)), tmp_path / "rtn.q4_0.gguf", "q4_0")
    assert not written.exact_layers and len(written.requantized_layers) == 14  # float32 scales, not float16


def test_tokenizer_metadata_matches_transformers(tmp_path, tiny_tokenizer):
    written = export_gguf(load(str(saved_tiny("llama", tmp_path, tiny_tokenizer))), tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(str(written.path), vocab_only=True, verbose=False)
    for text in (MULTILINGUAL, SAMPLE_TEXT[:300], "<|endoftext|> after a special token"):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
            tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    fields = gguf.GGUFReader(written.path).fields
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tiny_tokenizer.eos_token_id
    assert fields["tokenizer.chat_template"].contents() == tiny_tokenizer.chat_template


def test_export_cli_writes_gguf_and_modelfile(tmp_path, tiny_tokenizer):
    source = saved_tiny("qwen2", tmp_path, tiny_tokenizer)
    out = tmp_path / "out" / "tiny.q8_0.gguf"
    result = run_slm("export", str(source), "--quant", "q8_0", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bytes"] == out.stat().st_size and report["architecture"] == "qwen2"
    modelfile = (tmp_path / "out" / "tiny.q8_0.Modelfile").read_text()
    assert "FROM ./tiny.q8_0.gguf" in modelfile and '"<|endoftext|>"' in modelfile

    before = out.read_bytes()
    again = run_slm("export", str(source), "--quant", "f16", "--out", str(out))
    assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert out.read_bytes() == before


def test_export_refuses_what_gguf_cannot_hold(tmp_path, tiny_tokenizer):
    encoder = tmp_path / "bert"
    save(tiny_model("bert"), encoder, tiny_tokenizer, stage="test")
    result = run_slm("export", str(encoder), "--out", str(tmp_path / "bert.gguf"))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.strip() == (f"error: {encoder}: GGUF export needs a causal language model; "
                                     "this is an encoder (bert)")

    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.hidden_size, config.intermediate_size = 48, 96  # rows of 48: not a multiple of q4_0's 32
    odd = tmp_path / "odd"
    save(AutoModelForCausalLM.from_config(config), odd, tiny_tokenizer, stage="test")
    with pytest.raises(SlmError, match="not a multiple of 32"):
        export_gguf(load(str(odd)), tmp_path / "odd.gguf", "q4_0")
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".*tmp*"))

    # A k-quant falls back to a 32-value type on rows that are no multiple of 256, which rows of 48 refuse too.
    result = run_slm("export", str(odd), "--quant", "q3_k", "--out", str(tmp_path / "x.gguf"))
    assert result.returncode != 0 and "rows of 48 values, not a multiple of 32: --quant q3_K cannot hold it" \
        in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_quantize_target_refuses_contradicting_flags(tmp_path, tiny_tokenizer):
    source = saved_tiny("llama", tmp_path, tiny_tokenizer)
    result = run_slm("quantize", str(source), "--method", "rtn", "--target", "gguf-q4_0", "--group-size", "64",
                     "--out", str(tmp_path / "never"))
    assert result.returncode != 0 and "--target gguf-q4_0 needs group size 32" in result.stderr
    assert not (tmp_path / "never").exists()


def test_gguf_runs_on_the_llamacpp_backend_through_the_cli(tmp_path, tiny_tokenizer):
    source = saved_tiny("llama", tmp_path, tiny_tokenizer)
    gguf_path = tmp_path / "tiny.f32.gguf"
    assert run_slm("export", str(source), "--quant", "f32", "--out", str(gguf_path)).returncode == 0
    sample = tmp_path / "sample.txt"
    sample.write_text(SAMPLE_TEXT)
    scores = {}
    for model, backend in ((str(source), "torch"), (str(gguf_path), "llamacpp")):
        result = run_slm("eval", model, "--data", str(sample), "--max-length", "64", "--backend", backend, "--json")
        assert result.returncode == 0, result.stderr
        scores[backend] = json.loads(result.stdout)
    assert scores["llamacpp"]["scored_tokens"] == scores["torch"]["scored_tokens"]
    assert scores["llamacpp"]["token_perplexity"] == pytest.approx(scores["torch"]["token_perplexity"], rel=1e-3)

    bench = run_slm("bench", str(gguf_path), "--prompt-tokens", "16", "--gen-tokens", "8", "--repeats", "1", "--json")
    assert bench.returncode == 0, bench.stderr
    measured = json.loads(bench.stdout)
    assert measured["backend"] == "llamacpp" and measured["decode_tokens_per_s"] > 0
    assert measured["bytes_on_disk"] == gguf_path.stat().st_size

    answer = run_slm("generate", "Small models", "-m", str(gguf_path), "--temperature", "0",
                     "--max-new-tokens", "8", "--no-chat-template")
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
    from slmkit.runtime.llamacpp import LlamaCppModel

    prompt = tiny_tokenizer("Small models")["input_ids"]
    on_llamacpp = []
    for token in LlamaCppModel(gguf_path).llm.generate(prompt, temp=0.0):  # greedy
        on_llamacpp.append(token)
        if len(on_llamacpp) == 8:
            break
    with torch.no_grad():
        on_torch = load(str(source)).model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                                    pad_token_id=0)[0, len(prompt):].tolist()
    assert on_llamacpp == on_torch

    chat = run_slm("chat", str(gguf_path), "--temperature", "0", "--max-new-tokens", "4", stdin="Hi\n/exit\n")
    assert chat.returncode == 0, chat.stderr

    wrong = run_slm("bench", str(source), "--backend", "llamacpp")
    assert wrong.returncode != 0 and "slm export" in wrong.stderr
