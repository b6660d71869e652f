"""One model interface for every runtime: the same answers through it as from the models themselves,
generation that concurrent callers can share and cancel, and devices that are really there."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import VOCAB, run_slm

import slmkit
from slmkit.runtime import Model, SamplingConfig, generate, open_model

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def runtimes(tiny_llama_dir, tmp_path_factory):
    """The tiny llama on torch, and its float32 GGUF on llama.cpp."""
    gguf = tmp_path_factory.mktemp("interface") / "tiny.f32.gguf"
    slmkit.export(slmkit.load(str(tiny_llama_dir)), gguf, slmkit.GGUFConfig(quant="f32"))
    return open_model(str(tiny_llama_dir)), open_model(str(gguf), logits_all=True, n_ctx=128)


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, :len(tokens)], mask[row, :len(tokens)] = torch.tensor(tokens), 1
    return ids, mask


ROWS = [[5, 17, 80, 33, 2, 120, 7, 64, 9, 250], [40, 41, 42, 43, 44, 45]]


def test_every_runtime_is_a_model(runtimes):
    torch_lm, llama = runtimes
    assert isinstance(torch_lm, Model) and isinstance(llama, Model)
    assert (torch_lm.backend, llama.backend) == ("torch", "llamacpp")
    assert torch_lm.context == llama.context == 128  # llama.cpp's own is padded to 256; the model knows 128


def test_scores_through_the_interface_are_the_models_own(runtimes):
    torch_lm, llama = runtimes
    ids, mask = padded(ROWS)
    with torch.inference_mode():
        expected = torch_lm.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(torch_lm.logits(ids, mask), expected)
    torch.testing.assert_close(torch_lm.logits(ids, mask, keep=3), expected[:, -3:])  # the head on 3 positions
    from_llama = llama.logits(ids, mask)
    for row, tokens in enumerate(ROWS):  # each row's own positions; llama.cpp leaves the padding at zero
        torch.testing.assert_close(from_llama[row, :len(tokens)], expected[row, :len(tokens)], atol=2e-3, rtol=1e-3)
        assert not from_llama[row, len(tokens):].any()
    torch.testing.assert_close(llama.logits(ids, mask, keep=3)[0], expected[0, -3:], atol=2e-3, rtol=1e-3)


def test_log_likelihoods_and_perplexity_agree_across_runtimes(runtimes):
    from slmkit.evaluation.loglikelihood import loglikelihoods
    from slmkit.evaluation.perplexity import perplexity

    torch_lm, llama = runtimes
    pairs = [("Small models run", " on laptops"), ("The", " sea"), ("", "hello world")]
    for (torch_score, torch_greedy), (llama_score, llama_greedy) in zip(loglikelihoods(torch_lm, pairs),
                                                                      loglikelihoods(llama, pairs)):
        assert torch_score == pytest.approx(llama_score, abs=2e-3) and torch_greedy == llama_greedy
    text = "Small language models run on laptops and phones, offline and private. " * 4
    assert perplexity(torch_lm, text, max_length=32)["token_perplexity"] == pytest.approx(
        perplexity(llama, text, max_length=32)["token_perplexity"], rel=1e-3)


def test_greedy_steps_pick_the_same_tokens_on_every_runtime(runtimes):
    torch_lm, llama = runtimes
    prompt = ROWS[0]
    ids = torch.tensor([prompt])
    with torch.inference_mode():  # argmax decoding with the plain model, no cache
        for _ in range(8):
            ids = torch.cat([ids, torch_lm.model(ids).logits[:, -1:].argmax(-1)], dim=1)
    expected = ids[0, len(prompt):].tolist()
    for lm in runtimes:
        state, tokens = lm.prefill(prompt, len(prompt) + 8), []
        for _ in range(8):
            tokens.append(int(state.next_token if lm.backend == "torch" else state["next_token"]))
            lm.decode(state)
        assert tokens == expected, lm.backend


def test_embeddings_are_mean_pooled_last_hidden_states(runtimes, tiny_tokenizer):
    torch_lm, llama = runtimes
    texts = ["small models", "a longer sentence about running models offline"]
    embeddings = torch_lm.embed(texts)
    assert embeddings.shape == (2, torch_lm.config.hidden_size)
    for row, text in enumerate(texts):  # one text alone: no padding to hide
        ids = tiny_tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            hidden = torch_lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(embeddings[row], hidden[0].mean(dim=0), atol=1e-5, rtol=1e-4)
    assert llama.embed(texts).shape == (2, torch_lm.config.hidden_size)


def test_llama_cpp_embeds_a_whole_long_input_or_refuses_it(tmp_path, tiny_tokenizer):
    """Longer than llama.cpp's default micro-batch of 512: mean pooling must see every token, not the last 512."""
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM

    from slmkit.errors import SlmError

    config = tiny_config("llama")
    config.max_position_embeddings = 1024
    torch.manual_seed(0)
    checkpoint = slmkit.save(AutoModelForCausalLM.from_config(config).eval(), tmp_path / "long", tiny_tokenizer)
    gguf = tmp_path / "long.f32.gguf"
    slmkit.export(slmkit.load(str(checkpoint)), gguf, slmkit.GGUFConfig(quant="f32"))
    text = " ".join(f"model {n}" for n in range(170))
    assert 600 < len(tiny_tokenizer(text).input_ids) < 1000
    llama = open_model(str(gguf), n_ctx=1024)
    torch.testing.assert_close(llama.embed([text])[0], open_model(str(checkpoint)).embed([text])[0],
                               atol=1e-4, rtol=1e-3)
    with pytest.raises(SlmError, match=r"^cannot embed: Requested tokens \(\d+\) exceed batch size of 1024"):
        llama.embed([text + text])


def test_onnx_encoder_embeddings_match_torch(tmp_path, tiny_tokenizer):
    pytest.importorskip("onnxruntime")
    from conftest import tiny_model

    checkpoint = slmkit.save(tiny_model("bert"), tmp_path / "bert", tiny_tokenizer)
    written = slmkit.export(slmkit.load(str(checkpoint)), tmp_path / "bert-onnx", slmkit.OnnxConfig())
    assert isinstance(written, slmkit.StageResult) and written.out == tmp_path / "bert-onnx"
    assert (written.summary["format"], written.summary["kind"]) == ("onnx", "encoder")
    onnx_lm = open_model(str(tmp_path / "bert-onnx"))
    assert isinstance(onnx_lm, Model) and onnx_lm.backend == "onnx"
    texts = ["small models", "models that run offline on a phone"]
    torch.testing.assert_close(onnx_lm.embed(texts), open_model(str(checkpoint)).embed(texts), atol=1e-4,
                               rtol=1e-4)
    with pytest.raises(slmkit.SlmError, match="generation needs a causal language model; this ONNX model is an encoder"):
        "".join(generate(onnx_lm, "hi"))
    with pytest.raises(slmkit.SlmError, match="decoded together .* on the torch and llama.cpp backends, not onnx$"):
        onnx_lm.open_batch(slots=2, length=64)


@pytest.mark.parametrize("backend", ["torch", "llamacpp"])
def test_concurrent_generations_equal_sequential_ones(runtimes, backend):
    lm = runtimes[0] if backend == "torch" else runtimes[1]
    settings = [SamplingConfig(temperature=1.0, top_k=40, seed=seed, max_new_tokens=12) for seed in range(4)]
    settings.append(SamplingConfig(temperature=0, max_new_tokens=12))

    def answer(sampling):
        return "".join(generate(lm, "small models", sampling, use_template=False))

    sequential = [answer(sampling) for sampling in settings]
    with ThreadPoolExecutor(len(settings)) as pool:
        concurrent = list(pool.map(answer, settings))
    assert concurrent == sequential
    assert len(set(sequential[:4])) > 1  # the seeds really chose different tokens


def test_a_cancelled_stream_stops_before_its_next_token(runtimes, monkeypatch):
    torch_lm, _ = runtimes
    cancel, steps = threading.Event(), []
    decode = torch_lm.decode

    def counted_decode(*args):  # the caller cancels while the model computes its 3rd step
        steps.append(1)
        decode(*args)
        if len(steps) == 3:
            cancel.set()

    monkeypatch.setattr(torch_lm, "decode", counted_decode)
    sampling = SamplingConfig(temperature=0, max_new_tokens=40)
    text = "".join(generate(torch_lm, "small models", sampling, use_template=False, cancel=cancel))
    assert len(steps) == 3  # no step after the cancel
    monkeypatch.undo()
    full = "".join(generate(torch_lm, "small models", sampling, use_template=False))
    assert full.startswith(text) and len(text) < len(full)  # the answer so far, and the model serves the next


def test_a_cancelled_or_dropped_stream_frees_llama_cpp_for_the_next_caller(runtimes):
    _, llama = runtimes
    greedy = SamplingConfig(temperature=0, max_new_tokens=30)
    full = "".join(generate(llama, "small models", greedy, use_template=False))
    cancel = threading.Event()
    stream = generate(llama, "small models", greedy, use_template=False, cancel=cancel)
    first = next(stream)
    assert llama.sequence.busy()  # the context is this stream's while it runs
    cancel.set()
    rest = "".join(stream)
    assert not llama.sequence.busy() and full.startswith(first + rest) and len(first + rest) < len(full)
    dropped = generate(llama, "small models", greedy, use_template=False)
    next(dropped)
    dropped.close()  # a caller that walks away mid-answer
    assert not llama.sequence.busy()
    unfinished = generate(llama, "small models", greedy, use_template=False)
    next(unfinished)
    with pytest.raises(slmkit.SlmError, match="this thread has an unfinished stream of this model"):
        "".join(generate(llama, "small models", greedy, use_template=False))  # would wait for itself
    unfinished.close()
    with ThreadPoolExecutor(1) as pool:  # another thread gets the model at once
        assert pool.submit(lambda: "".join(generate(llama, "small models", greedy, use_template=False))
                           ).result(timeout=60) == full


def test_a_device_that_is_not_there_is_one_line_and_exit_2(tiny_llama_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_slm("bench", str(tiny_llama_dir), "--device", "cuda", "--prompt-tokens", "4", "--gen-tokens", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --device cuda: no CUDA device here (torch {torch.__version__} sees none); use --device cpu"]
    with pytest.raises(slmkit.SlmError, match=r"^unknown --device 'tpu'; choose one of auto \| cpu \| cuda"):
        open_model(str(tiny_llama_dir), device="tpu")
    with pytest.raises(slmkit.SlmError, match=r"^unknown --dtype 'float8'; choose one of auto, float32"):
        open_model(str(tiny_llama_dir), dtype="float8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_and_compresses_as_the_cpu_does(tiny_llama_dir):
    cpu, cuda = open_model(str(tiny_llama_dir), device="cpu"), open_model(str(tiny_llama_dir), device="cuda",
                                                                         dtype="float32")
    ids, mask = padded(ROWS)
    torch.testing.assert_close(cuda.logits(ids, mask).cpu(), cpu.logits(ids, mask), atol=1e-4, rtol=1e-4)
    calibration = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    on_cpu, on_gpu = slmkit.load(str(tiny_llama_dir), device="cpu"), slmkit.load(str(tiny_llama_dir), device="cpu")
    slmkit.quantize(on_cpu, slmkit.GPTQConfig(bits=4, group_size=16), calibration)
    slmkit.quantize(on_gpu, slmkit.GPTQConfig(bits=4, group_size=16), calibration, device="cuda")
    assert next(on_gpu.model.parameters()).device.type == "cpu"  # blocks went back after their turn
    for (name, expected), got in zip(on_cpu.model.state_dict().items(), on_gpu.model.state_dict().values()):
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3, msg=name)


def test_compression_and_export_refuse_a_model_they_cannot_rewrite_exactly(tiny_llama_dir, tmp_path):
    lm = slmkit.load(str(tiny_llama_dir), dtype="bfloat16")
    message = r"works on a float32 model on the CPU, and this one is bfloat16 on cpu; load it with slmkit.load"
    with pytest.raises(slmkit.SlmError, match=f"^quantization {message}"):
        slmkit.quantize(lm, slmkit.GPTQConfig(bits=4, group_size=16), torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(slmkit.SlmError, match=f"^GGUF export {message}"):
        slmkit.export(lm, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_a_failed_bench_worker_is_one_error_line(tmp_path):
    from slmkit.evaluation.bench import bench_in_fresh_process

    with pytest.raises(slmkit.SlmError, match=f"^{tmp_path / 'missing'}: no such file or directory$"):
        bench_in_fresh_process(str(tmp_path / "missing"), prompt_tokens=4, gen_tokens=1, repeats=1)
