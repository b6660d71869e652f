import mmap
import os
import re
import shutil
from pathlib import Path

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
    """Each prompt is the newest whole exchanges that fit the context less the answer's tokens."""
    sampling = SamplingConfig(temperature=0, max_new_tokens=8)
    session = ChatSession(tiny_lm, sampling)
    session.context = 120  # about one exchange and a new question
    budget = session.context - sampling.max_new_tokens
    tokenizer = tiny_lm.tokenizer
    seen = []  # (input ids of each forward pass of the model, the history then)

    def record(module, args, kwargs):
        seen.append((kwargs.get("input_ids", args[0] if args else None), list(session.history)))

    hook = tiny_lm.model.register_forward_pre_hook(record, with_kwargs=True)
    transcript = []  # every message, none dropped
    try:
        for turn in range(6):
            question = f"turn {turn} about small language models"
            transcript.append({"role": "user", "content": question})
            first = len(seen)
            answer = "".join(session.reply(question)).strip()
            transcript.append({"role": "assistant", "content": answer})
            ids, kept = seen[first]  # the prompt's forward pass; then one per new token
            assert kept == transcript[len(transcript) - 1 - len(kept):-1] and kept[0]["role"] == "user"
            assert ids.shape[1] <= budget
            rendered = tokenizer(render_prompt(tokenizer, kept), add_special_tokens=False, return_tensors="pt")
            assert torch.equal(ids.cpu(), rendered.input_ids)  # whole messages, none cut
            if len(kept) < len(transcript) - 1:  # the exchange dropped last would not have fitted
                longer = transcript[len(transcript) - 3 - len(kept):-1]
                assert len(tokenizer(render_prompt(tokenizer, longer), add_special_tokens=False).input_ids) > budget
    finally:
        hook.remove()
    assert 4 <= len(session.history) < len(transcript)  # the oldest exchanges dropped, the latest kept
    assert session.history == transcript[-len(session.history):]
    assert session.history[0]["content"] != transcript[0]["content"]
    session.reset()
    assert session.history == []


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "--temperature must be >= 0, got -1"),
    ({"top_p": 0}, "--top-p must be in (0, 1], got 0"),
    ({"top_k": -2}, "--top-k must be >= 0, got -2"),
    ({"min_p": 1.0}, "--min-p must be in [0, 1), got 1.0"),
    ({"max_new_tokens": 0}, "--max-new-tokens must be positive, got 0"),
    ({"repetition_penalty": 0}, "--repetition-penalty must be > 0, got 0"),
])
def test_sampling_config_validation(kwargs, message):
    with pytest.raises(slmkit.SlmError, match=f"^{re.escape(message)}$"):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_faster_cpu_weights_keep_the_models_logits(tiny_llama_dir, weights):
    from slmkit.runtime import open_model as load_model
    from slmkit.runtime.weights import Int8Linear

    reference = load_model(str(tiny_llama_dir))
    fast = load_model(str(tiny_llama_dir), weights=weights)
    if weights == "int8":
        from torch import nn

        modules = list(fast.model.modules())
        assert not any(type(module) is nn.Linear for module in modules)  # every Linear, the LM head too
        assert isinstance(fast.model.lm_head, Int8Linear)
        assert fast.parameters == sum(p.numel() for p in reference.model.parameters())
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference.model(input_ids=ids).logits.flatten()
        got = fast.model(input_ids=ids).logits.float().flatten()
    assert float(torch.corrcoef(torch.stack([expected, got]))[0, 1]) > 0.99
    assert not torch.equal(expected, got)  # the weights really changed
    # generate decodes greedily with the converted model: the tokens transformers' greedy search on it picks,
    # up to the first end-of-generation token (the generation config's or the tokenizer's)
    text = "".join(generate(fast, "Hello", SamplingConfig(temperature=0, max_new_tokens=4), use_template=False))
    configured = fast.model.generation_config.eos_token_id
    stops = {fast.tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])} - {None}
    prompt = fast.tokenizer("Hello", return_tensors="pt").input_ids
    with torch.inference_mode():
        greedy = fast.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                     max_new_tokens=4, eos_token_id=sorted(stops),
                                     pad_token_id=fast.tokenizer.pad_token_id)
    tokens = greedy[0, prompt.shape[1]:].tolist()
    tokens = tokens[:next((i for i, token in enumerate(tokens) if token in stops), len(tokens))]
    assert tokens  # a text to compare
    assert text == fast.tokenizer.decode(tokens, skip_special_tokens=True)


# 100 and 24: widths that are not a multiple of the kernel's 16-column blocks (structured pruning makes them)
@pytest.mark.parametrize("in_features", [96, 100, 24])
def test_int8_linear_holds_the_rounded_weights_and_multiplies_with_them(in_features):
    from slmkit.runtime.weights import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, 40)
    layer = Int8Linear(linear.weight, linear.bias)
    assert layer.weight.shape == (40, in_features)
    q, scale = layer.weight, layer.weight_scale
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.equal(q.abs().amax(dim=1), torch.full((40,), 127, dtype=torch.int8))  # each row spans the grid
    dequantized = q.float() * scale[:, None]
    rounding_error = (dequantized - linear.weight.detach()).abs()
    assert bool((rounding_error <= scale[:, None] / 2 + 1e-7).all())  # round to nearest, row by row
    with torch.inference_mode():
        for rows in (1, 3, 64, 65, 200):  # the decode kernel (bfloat16 activations) and the prompt GEMM
            x = torch.randn(rows, in_features)
            exact = torch.nn.functional.linear(x, dequantized, linear.bias)
            tolerance = 2e-2 if rows <= Int8Linear.decode_rows else 1e-5
            torch.testing.assert_close(layer(x), exact, rtol=tolerance, atol=tolerance)
        assert layer(torch.randn(2, 5, in_features)).shape == (2, 5, 40)


@pytest.mark.parametrize("bits, group_size, kept", [(8, 0, True), (4, 0, True), (4, 16, False)])
def test_int8_keeps_a_calibrated_checkpoints_values_when_they_fit_its_grid(tiny_llama_dir, tmp_path, bits,
                                                                           group_size, kept):
    from slmkit.compress.quantize import quant_config
    from slmkit.runtime import open_model as load_model
    from slmkit.runtime.weights import Int8Linear

    lm = slmkit.load(str(tiny_llama_dir))
    calibration = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    config = quant_config("gptq", bits=bits, group_size=group_size)
    out = tmp_path / "gptq"
    slmkit.save(lm, out, result=slmkit.quantize(lm, config, calibration))
    reference, fast = load_model(str(out)), load_model(str(out), weights="int8")
    quantized = [name for name, _ in reference.model.named_modules() if name.startswith("model.layers.")
                 and name.endswith("_proj")]
    assert fast.int8_checkpoint_layers == (len(quantized) if kept else 0)
    modules = dict(fast.model.named_modules())
    for name, float_layer in reference.model.named_modules():
        if name in quantized:
            layer = modules[name]
            assert isinstance(layer, Int8Linear)
            on_int8_grid = layer.weight.float() * layer.weight_scale[:, None]
            # Per channel: the calibrated values themselves; group-wise: rounded onto one scale per row.
            assert torch.equal(on_int8_grid, float_layer.weight) == kept
            if kept:
                assert int(layer.weight.abs().max()) <= 2 ** (bits - 1)  # the checkpoint's codes, not rescaled


def _filesystem(path: Path) -> str:
    """The type of the filesystem `path` is on (the longest mount point above it, from /proc/self/mounts)."""
    mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    above = [(point, kind) for point, kind in mounts if str(path).startswith(point.rstrip("/") + "/")]
    return max(above, key=lambda mount: len(mount[0]))[1] if above else "unknown"


def _resident_kib(path: Path) -> int:
    """This process's resident memory in the mappings of `path` (from /proc/self/smaps)."""
    total, current = 0, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields[0].split("-")) == 2 and ":" not in fields[0]:
            current = fields[5] if len(fields) >= 6 else None
        elif fields[0] == "Rss:" and current == str(path):
            total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only: reads /proc/self/smaps")
def test_memory_return_drops_a_checkpoints_pages_and_keeps_the_values(tiny_llama_dir, tmp_path):
    from slmkit.runtime.weights import MemoryReturn

    # A copy of its own: the kernel pages out only pages no other mapping (an earlier test's model) shares,
    # and only clean ones (synced).
    checkpoint = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    mapping = (checkpoint / "model.safetensors").resolve()
    if _filesystem(mapping) in ("tmpfs", "ramfs"):
        pytest.skip("pages of a file in memory (tmpfs) are paged out only to swap")
    with open(mapping, "rb") as file:
        os.fsync(file.fileno())
    lm = slmkit.load(str(checkpoint))
    memory = MemoryReturn()
    weights = [p for p in lm.model.parameters() if p.numel() * p.element_size() >= 4 * mmap.PAGESIZE]
    assert weights and all(memory.is_mapped(p) for p in weights)
    values = [p.detach().clone() for p in weights]  # reading them makes their pages resident
    before = _resident_kib(mapping)
    for weight in weights:
        memory.release(weight)
    assert _resident_kib(mapping) < before
    assert all(torch.equal(weight, value) for weight, value in zip(weights, values))  # read back from the file
    assert not memory.is_mapped(values[0])  # a copy in memory of its own is never dropped


def test_bfloat16_a_tensor_at_a_time_is_the_whole_model_cast(tiny_llama_dir):
    from slmkit.runtime.weights import convert_weights

    reference = slmkit.load(str(tiny_llama_dir)).model.to(torch.bfloat16)
    converted = convert_weights(slmkit.load(str(tiny_llama_dir)), "bfloat16").model
    for (name, expected), got in zip(reference.state_dict().items(), converted.state_dict().values()):
        assert got.dtype == expected.dtype and torch.equal(got, expected), name
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(reference(input_ids=ids).logits, converted(input_ids=ids).logits)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3", "phi", "gpt2", "gpt_neo", "gptj", "bert",
                                        "distilbert", "mobilebert", "t5"])
def test_int8_converts_every_linear_layer_of_each_family(model_type):
    from conftest import tiny_model

    from slmkit.models.layers import is_linear
    from slmkit.runtime.weights import Int8Linear, quantize_int8

    reference, model = tiny_model(model_type), tiny_model(model_type)
    linears = sum(is_linear(module) for module in reference.modules())
    assert quantize_int8(model) == (linears, 0)  # (replaced, kept on a checkpoint's grid: none given)
    assert linears > 0
    assert not any(is_linear(module) for module in model.modules())  # GPT-2's Conv1D layers too
    assert sum(isinstance(module, Int8Linear) for module in model.modules()) == linears
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "decoder_input_ids": ids[:, :5]} if model_type == "t5" else {"input_ids": ids}
    with torch.inference_mode():
        expected, got = reference(**inputs)[0].flatten(), model(**inputs)[0].flatten()
        token = {key: value[:, :1] for key, value in inputs.items()}  # one row: the weight-only kernel
        one_row = torch.stack([reference(**token)[0].flatten(), model(**token)[0].flatten()])
    assert float(torch.corrcoef(torch.stack([expected, got]))[0, 1]) > 0.999
    assert float(torch.corrcoef(one_row)[0, 1]) > 0.999


def test_compiled_decode_steps_give_the_eager_logits_without_recompiling(tiny_llama_dir):
    from torch._dynamo.utils import counters

    from slmkit.evaluation.bench import bench
    from slmkit.runtime import open_model

    lm = open_model(str(tiny_llama_dir), weights="int8", compile_decode=True)
    eager_lm = open_model(str(tiny_llama_dir), weights="int8")
    assert lm._step is not lm.model and lm._step is lm._step  # compiled once, shared by bench and generate
    ids = torch.randint(0, VOCAB, (14,), generator=torch.Generator().manual_seed(0)).tolist()
    torch._dynamo.reset()
    counters.clear()
    states = [model.prefill(ids[:8], 16) for model in (eager_lm, lm)]
    for position in range(8, 14):
        token = torch.tensor([[ids[position]]])
        for model, state in zip((eager_lm, lm), states):
            model.decode(state, token)
        torch.testing.assert_close(states[1].logits, states[0].logits, atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1
    result = bench(lm, prompt_tokens=8, gen_tokens=4, repeats=2)
    assert result["compiled"] and result["decode_tokens_per_s"] > 0
    assert counters["stats"]["unique_graphs"] == 2  # bench's cache size: one graph for warm-up and timed runs
    sampling = SamplingConfig(temperature=0, max_new_tokens=6)
    before = counters["stats"]["unique_graphs"]
    assert "".join(generate(lm, "small models", sampling)) == "".join(generate(eager_lm, "small models", sampling))
    assert counters["stats"]["unique_graphs"] > before  # generate really ran the compiled step
    session = ChatSession(lm, sampling)
    for turn in range(3):
        "".join(session.reply(f"turn {turn} about small language models"))
        if turn == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs  # later, longer turns fit the first turn's cache size


def test_compiled_chat_rounds_the_cache_up_to_few_sizes(tiny_llama_dir):
    from slmkit.runtime import open_model

    lm = open_model(str(tiny_llama_dir))
    assert lm.chat_cache_tokens(50) == 50  # eager: the exact size
    lm.compiled = True
    lm.config.max_position_embeddings = 8192
    assert [lm.chat_cache_tokens(n) for n in (1, 50, 256, 257, 640, 5000, 9000)] == \
        [256, 256, 256, 512, 1024, 8192, 9000]


def test_compile_is_refused_where_it_cannot_apply(tmp_path, tiny_tokenizer, monkeypatch):
    from conftest import tiny_model

    import slmkit.runtime.torch_backend
    from slmkit import save
    from slmkit.runtime import open_model
    from slmkit.runtime.weights import enable_compile

    for model_type, message in [("gpt_neo", "needs a static KV cache"), ("bert", "needs a causal language model")]:
        directory = tmp_path / model_type
        save(tiny_model(model_type), directory, tiny_tokenizer, stage="test")
        loaded = open_model(str(directory))
        with pytest.raises(slmkit.SlmError, match=message):
            enable_compile(loaded)  # what a model from elsewhere (a hub id) meets once loaded
        with monkeypatch.context() as patch:
            patch.setattr(slmkit.runtime.torch_backend, "load", lambda *a, **k: pytest.fail("loaded before refusing"))
            with pytest.raises(slmkit.SlmError, match=message):
                open_model(str(directory), compile_decode=True)


def test_weights_option_is_refused_for_gguf_on_llamacpp(tmp_path):
    from conftest import run_slm

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    pytest.importorskip("llama_cpp")
    result = run_slm("bench", str(gguf), "--weights", "int8")
    assert result.returncode != 0 and "--weights int8 applies to the torch backend" in result.stderr
    result = run_slm("generate", "hi", "-m", str(gguf), "--compile")
    assert result.returncode != 0 and "--compile applies to the torch backend" in result.stderr


def test_unknown_weights_is_refused_before_the_model_loads(tmp_path):
    from conftest import run_slm

    result = run_slm("bench", str(tmp_path / "no-such-model"), "--weights", "int4")
    assert result.returncode != 0 and "unknown --weights 'int4'" in result.stderr


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3", "phi", "gpt2", "gpt_neo", "gptj"])
def test_decoding_on_the_runtime_kv_cache_matches_a_full_forward_pass(model_type):
    from slmkit.models import LoadedModel
    from slmkit.runtime.torch_backend import TorchModel

    model = tiny_model(model_type)
    lm = TorchModel.wrap(LoadedModel(model=model, tokenizer=None, spec=model_type, kind="causal-lm", path=None))
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    state = lm.prefill(ids[0, :8].tolist(), 12)  # the steps bench times and generation runs
    stepped = [state.logits]
    for position in range(8, 11):
        lm.decode(state, ids[:, position:position + 1])
        stepped.append(state.logits)
    with torch.inference_mode():
        full = model(input_ids=ids[:, :11]).logits[:, 7:11]
    torch.testing.assert_close(torch.stack(stepped, dim=1), full, atol=1e-5, rtol=1e-4)


def test_compile_without_a_cxx_compiler_is_a_one_line_error(tiny_llama_dir, monkeypatch):
    from test_cli import assert_one_line_error

    from conftest import run_slm

    monkeypatch.setenv("CXX", "/nonexistent/g++")  # Inductor's compiler, as on an image without one
    result = run_slm("bench", str(tiny_llama_dir), "--compile", "--prompt-tokens", "8", "--gen-tokens", "2")
    assert_one_line_error(result, "--compile needs a C++ compiler", "/nonexistent/g++")


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, tiny_tokenizer):
    """A saved tiny T5 (its tokenizer carries a chat template, which seq2seq generation must not apply)."""
    model = tiny_model("t5")
    # Redrawn wider than T5's init: at init a tiny T5 repeats one token, which would hide a decoder step
    # that forgets the earlier ones.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    directory = slmkit.save(model, tmp_path_factory.mktemp("models") / "tiny-t5", tiny_tokenizer, stage="test")
    return directory, slmkit.load(str(directory))


def _seq2seq_calls(lm):
    """Hooks recording the encoder's input ids and each decoder step's input ids; remove() them when done."""
    calls = {"encoder": [], "decoder": []}
    hooks = [lm.model.get_encoder().register_forward_pre_hook(
                 lambda module, args, kwargs: calls["encoder"].append(kwargs["input_ids"]), with_kwargs=True),
             lm.model.register_forward_pre_hook(
                 lambda module, args, kwargs: calls["decoder"].append(kwargs["decoder_input_ids"]),
                 with_kwargs=True)]
    return calls, hooks


def test_seq2seq_greedy_generation_matches_transformers_generate(tiny_t5):
    _, lm = tiny_t5
    prompt, new_tokens = "the teacher writes data", 12
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    expected = lm.model.generate(ids, max_new_tokens=new_tokens, do_sample=False)  # [start, 12 answer tokens]
    answer = set(expected[0, 1:].tolist())
    # Many different tokens and no stop: an answer that repeats one token would not test the cache.
    assert expected.shape[1] == 1 + new_tokens and len(answer) >= 6 and not answer & lm.stop_tokens()
    calls, hooks = _seq2seq_calls(lm)
    try:
        text = "".join(generate(lm, prompt, SamplingConfig(temperature=0, max_new_tokens=new_tokens)))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls["encoder"]) == 1 and torch.equal(calls["encoder"][0].cpu(), ids)  # plain text, encoded once
    # One decoder step a token, each fed only the newest one (the cache holds the rest).
    assert torch.equal(torch.cat(calls["decoder"], dim=1).cpu(), expected[:, :new_tokens])
    assert text == lm.tokenizer.decode(expected[0, 1:], skip_special_tokens=True)


def test_seq2seq_rows_decoded_together_take_turns_and_answer_as_alone(tiny_t5):
    _, lm = tiny_t5
    prompts = [lm.tokenizer(text).input_ids for text in ("the teacher writes data", "a row that joins later")]
    alone = [lm.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)[0, 1:].tolist()
             for ids in prompts]
    rows = lm.open_batch(slots=2, length=64)
    assert rows.admits(1) and not rows.admits(2)
    answers = {0: [int(rows.advance([(0, prompts[0])], [])[0].argmax())]}
    logits = rows.advance([(1, prompts[1])], [(0, answers[0][-1])])  # the new row's logits come first
    answers[1], answers[0] = [int(logits[0].argmax())], answers[0] + [int(logits[1].argmax())]
    for _ in range(2):
        logits = rows.advance([], [(1, answers[1][-1]), (0, answers[0][-1])])
        answers[1].append(int(logits[0].argmax()))
        answers[0].append(int(logits[1].argmax()))
    rows.release(0)
    assert alone[0][:3] != alone[1][:3]  # a row fed the other's state would show
    assert answers[0] == alone[0] and answers[1] == alone[1][:3]


def test_seq2seq_repetition_penalty_sees_the_answer_not_the_prompt(tiny_t5):
    """As in transformers' generate: the penalty looks at the decoder's ids, not at the encoder's."""
    _, lm = tiny_t5
    first = lm.model.generate(lm.tokenizer("the teacher writes data", return_tensors="pt").input_ids,
                              max_new_tokens=8, do_sample=False)
    prompt = first[:, 1:]  # tokens this model likes to write: penalised in the prompt, they would change the answer
    expected = lm.model.generate(prompt, max_new_tokens=8, do_sample=False, repetition_penalty=2.0)
    sampling = SamplingConfig(temperature=0, repetition_penalty=2.0, max_new_tokens=8)
    text = "".join(lm.stream(prompt[0].tolist(), sampling))
    assert text == lm.tokenizer.decode(expected[0, 1:], skip_special_tokens=True)


def test_seq2seq_seeded_sampling_repeats_and_cancel_stops_between_tokens(tiny_t5):
    import threading

    _, lm = tiny_t5
    sampling = SamplingConfig(temperature=1.0, top_k=50, repetition_penalty=1.3, seed=3, max_new_tokens=10)
    assert "".join(generate(lm, "hi", sampling)) == "".join(generate(lm, "hi", sampling))
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    cancel = threading.Event()
    steps = []

    def count_and_cancel(module, args, kwargs):
        steps.append(kwargs["decoder_input_ids"])
        if len(steps) == 3:  # the step after the second token
            cancel.set()

    hook = lm.model.register_forward_pre_hook(count_and_cancel, with_kwargs=True)
    try:
        text = "".join(generate(lm, "small models", greedy, cancel=cancel))
    finally:
        hook.remove()
    assert len(steps) == 3  # no step after the cancel
    two_tokens = torch.cat(steps[1:], dim=1)[0]
    assert text == lm.tokenizer.decode(two_tokens, skip_special_tokens=True)
    assert "".join(generate(lm, "small models", greedy)).startswith(text)


def test_seq2seq_chat_answers_two_turns_from_plain_text(tiny_t5):
    _, lm = tiny_t5
    session = ChatSession(lm, SamplingConfig(temperature=0, max_new_tokens=6))
    calls, hooks = _seq2seq_calls(lm)
    try:
        answers = ["".join(session.reply(question)) for question in ("what is small?", "and fast?")]
    finally:
        for hook in hooks:
            hook.remove()
    assert all(answer.strip() for answer in answers)
    assert [message["role"] for message in session.history] == ["user", "assistant", "user", "assistant"]
    transcript = f"User: what is small?\nAssistant: {answers[0].strip()}\nUser: and fast?\nAssistant:"
    encoded = [lm.tokenizer(text).input_ids for text in ("what is small?", transcript)]
    assert [ids[0].tolist() for ids in calls["encoder"]] == encoded


def test_slm_generate_answers_with_a_seq2seq_checkpoint(tiny_t5):
    from conftest import run_slm

    directory, lm = tiny_t5
    expected = "".join(generate(lm, "small models", SamplingConfig(temperature=0, max_new_tokens=8)))
    result = run_slm("generate", "small models", "-m", str(directory), "--temperature", "0",
                     "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_models_that_write_no_text_are_refused_generation(tmp_path, tiny_tokenizer):
    from slmkit.runtime import open_model

    bert = slmkit.load(str(slmkit.save(tiny_model("bert"), tmp_path / "bert", tiny_tokenizer, stage="test")))
    message = f"^{re.escape(str(tmp_path / 'bert'))}: (generation|chat) needs a causal language model; " \
              r"this is an encoder \(bert\)$"
    with pytest.raises(slmkit.SlmError, match=message):
        generate(bert, "hi")
    with pytest.raises(slmkit.SlmError, match=message):
        ChatSession(bert, SamplingConfig())
    with pytest.raises(slmkit.SlmError, match=message):
        bert.open_batch(slots=2, length=64)  # what the server's engine would decode its rows with
    # A GGUF holds a causal LM: asking llama.cpp for a seq2seq one is refused before the file is read.
    with pytest.raises(slmkit.SlmError, match="a GGUF file holds a causal language model$"):
        open_model(str(tmp_path / "model.gguf"), backend="llamacpp", kind="seq2seq")
