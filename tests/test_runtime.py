import pytest
import torch
from conftest import VOCAB, tiny_model

import slmkit
from slmkit.runtime import ChatSession, SamplingConfig, generate
from slmkit.runtime.generate import render_prompt


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    return slmkit.load(str(tiny_llama_dir))


def test_greedy_generation_matches_argmax_decoding(tiny_lm):
    import torch

    text = "".join(generate(tiny_lm, "small models", SamplingConfig(temperature=0, max_new_tokens=6),
                            use_template=False))
    ids = tiny_lm.tokenizer("small models", return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, tiny_lm.model(ids).logits[:, -1:].argmax(-1)], dim=1)
    expected = tiny_lm.tokenizer.decode(ids[0, -6:], skip_special_tokens=True)
    assert text == expected


def test_seeded_sampling_repeats(tiny_lm):
    config = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, min_p=0.05, seed=3, max_new_tokens=8)
    assert "".join(generate(tiny_lm, "hi", config)) == "".join(generate(tiny_lm, "hi", config))


def test_chat_template_is_sandboxed(tiny_lm):
    tokenizer = tiny_lm.tokenizer
    saved = tokenizer.chat_template
    tokenizer.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    try:
        with pytest.raises(slmkit.SlmError, match="chat template"):
            render_prompt(tokenizer, [{"role": "user", "content": "x"}])
    finally:
        tokenizer.chat_template = saved


def test_chat_history_is_trimmed_to_the_context(tiny_lm):
    session = ChatSession(tiny_lm, SamplingConfig(temperature=0, max_new_tokens=8))
    session.context = 60
    for turn in range(6):
        "".join(session.reply(f"turn {turn} about small language models"))
    prompt = session._fitted_prompt()
    assert prompt.shape[1] <= 60 - 8
    assert session.history[0]["content"].startswith("turn") and len(session.history) < 12
    session.reset()
    assert session.history == []


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"min_p": 1.0},
                                    {"max_new_tokens": 0}, {"repetition_penalty": 0}])
def test_sampling_config_validation(kwargs):
    with pytest.raises(slmkit.SlmError):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_faster_cpu_weights_keep_the_models_logits(tiny_llama_dir, weights):
    import torch

    from slmkit.cli.common import load_model

    reference = load_model(str(tiny_llama_dir))
    fast = load_model(str(tiny_llama_dir), weights=weights)
    if weights == "int8":
        from torch import nn
        from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

        modules = list(fast.model.modules())
        assert not any(type(module) is nn.Linear for module in modules)  # every Linear, the LM head too
        assert isinstance(fast.model.lm_head, DynamicInt8Linear)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference.model(input_ids=ids).logits.flatten()
        got = fast.model(input_ids=ids).logits.float().flatten()
    assert float(torch.corrcoef(torch.stack([expected, got]))[0, 1]) > 0.99
    assert not torch.equal(expected, got)  # the weights really changed
    text = "".join(generate(fast, "Hello", SamplingConfig(temperature=0, max_new_tokens=4)))
    assert isinstance(text, str)


def test_weights_option_is_refused_for_gguf_on_llamacpp(tmp_path):
    from conftest import run_slm

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    pytest.importorskip("llama_cpp")
    result = run_slm("bench", str(gguf), "--weights", "int8")
    assert result.returncode != 0 and "--weights int8 applies to the torch backend" in result.stderr


def test_unknown_weights_is_refused_before_the_model_loads(tmp_path):
    from conftest import run_slm

    result = run_slm("bench", str(tmp_path / "no-such-model"), "--weights", "int4")
    assert result.returncode != 0 and "unknown --weights 'int4'" in result.stderr


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3", "phi", "gpt2", "gpt_neo", "gptj"])
def test_decoding_on_the_runtime_kv_cache_matches_a_full_forward_pass(model_type):
    from slmkit.evaluate.bench import _cache_argument
    from slmkit.runtime.weights import new_kv_cache

    model = tiny_model(model_type)
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    cache_argument = _cache_argument(model)
    with torch.inference_mode():
        output = model(input_ids=ids[:, :8], use_cache=True, **{cache_argument: new_kv_cache(model, 12)})
        stepped = [output.logits[:, -1]]
        for position in range(8, 11):
            output = model(input_ids=ids[:, position:position + 1], use_cache=True,
                           **{cache_argument: getattr(output, cache_argument)})
            stepped.append(output.logits[:, -1])
        full = model(input_ids=ids[:, :11]).logits[:, 7:11]
    torch.testing.assert_close(torch.stack(stepped, dim=1), full, atol=1e-5, rtol=1e-4)
