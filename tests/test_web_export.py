"""`slm export --format web`: the folder's files (the model's bytes as exported, every file listed with its hash),
and its page in headless Chromium: greedy answers equal slm's llama.cpp runtime's, a classifier's label and
probability equal onnxruntime's, nothing is fetched from outside the origin, and a second visit runs offline."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from chromium import CHROMIUM, Page, PageError
from conftest import SMOL_TEMPLATE, tiny_model
from test_cli import assert_one_line_error
from test_onnx import TEXTS, bert_tokenizer, tiny_classifier  # noqa: F401  (bert_tokenizer is a fixture)
from test_serve import Running

import slmkit
from slmkit import load, save
from slmkit.errors import SlmError
from slmkit.exporters import WebConfig, export_gguf, export_web, export_web_file
from slmkit.exporters.web import NODE_MODULES, split_gguf
from slmkit.runtime import open_model
from slmkit.sampling import SamplingConfig
from slmkit.server.static import static_app

pytestmark = pytest.mark.skipif(not NODE_MODULES.is_dir(), reason="the browser runtimes are not installed (make web)")
browser = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")


@pytest.fixture(scope="module")
def ascii_llama(tmp_path_factory, tiny_tokenizer):
    """A tiny ChatML decoder whose every token it can pick is printable ASCII: the output rows of the others are
    zero (their logit 0, below the best of the rest), so the answers compared are text both runtimes print
    (wllama cannot return a reply that is not UTF-8, as a random model's byte tokens make it)."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = SMOL_TEMPLATE
    model = tiny_model("llama", seed=3)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for token in range(len(tokenizer)):
            text = tokenizer.decode([token])
            if token in tokenizer.all_special_ids or not (text.isascii() and text.isprintable() and text):
                model.lm_head.weight[token] = 0
    return save(model, tmp_path_factory.mktemp("web") / "ascii-llama", tokenizer, stage="test")


def manifest_of(folder):
    return json.loads((folder / "slm-web.json").read_text())


def test_a_gguf_is_copied_as_it_is_and_every_file_is_listed_with_its_hash(ascii_llama, tmp_path):
    gguf = export_gguf(load(str(ascii_llama)), tmp_path / "m.q8_0.gguf", "q8_0").path
    before = gguf.read_bytes()
    written = slmkit.export(str(gguf), tmp_path / "web", WebConfig())
    folder = written.out
    assert (folder / "model/model.gguf").read_bytes() == before == gguf.read_bytes()
    manifest = manifest_of(folder)
    assert manifest["kind"] == "causal-lm" and manifest["runtime"]["name"] == "wllama"
    assert [file["path"] for file in manifest["model_files"]] == ["model/model.gguf"]
    listed = {file["path"]: file for file in manifest["files"]}
    on_disk = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert on_disk - set(listed) == {"index.html", "chat.css", "chat.js", "slm.js", "sw.js", "slm-web.json"}
    for path, file in listed.items():
        data = (folder / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (file["bytes"], file["sha256"])
    assert written.summary["bytes"] == sum(file["bytes"] for file in manifest["files"])
    # The service worker's cache is named after this export.
    assert '"__SLM_CACHE__"' not in (folder / "sw.js").read_text() and "slm-web-" in (folder / "sw.js").read_text()
    with pytest.raises(SlmError, match="--quant"):
        slmkit.export(str(gguf), tmp_path / "web2", WebConfig(quant="q4_0"))


def test_bad_outputs_and_inputs_are_refused_in_one_line(ascii_llama, tmp_path):
    from conftest import run_slm

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    assert_one_line_error(run_slm("export", str(ascii_llama), "--format", "web", "--out", str(tmp_path / "taken")),
                          "is not empty")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"
    (tmp_path / "not.gguf").write_bytes(b"GGUF\x03\x00")
    assert_one_line_error(run_slm("export", str(tmp_path / "not.gguf"), "--format", "web", "--out",
                                  str(tmp_path / "w")), "truncated or corrupt GGUF")
    assert not (tmp_path / "w").exists()


def test_a_split_gguf_is_read_by_llama_cpp_as_the_whole_file(ascii_llama, tmp_path):
    from gguf import GGUFReader

    whole = export_gguf(load(str(ascii_llama)), tmp_path / "whole.gguf", "f16").path
    shards = split_gguf(GGUFReader(whole), tmp_path / "split" / "model.gguf", 16 * 1024)
    assert len(shards) > 2 and shards[0].name == f"model-00001-of-{len(shards):05d}.gguf"
    assert all(shard.stat().st_size < 40 * 1024 for shard in shards)

    def greedy_tokens(path):  # llama.cpp itself: slm's runtime validates a whole file, not a shard
        import llama_cpp

        llm = llama_cpp.Llama(str(path), n_ctx=64, verbose=False)
        prompt = llm.tokenize(b"small models", add_bos=False)
        return [token for token, _ in zip(llm.generate(prompt, temp=0, top_k=1), range(12))]

    assert greedy_tokens(shards[0]) == greedy_tokens(whole)


@pytest.fixture
def serving():
    """Serves a folder on loopback as `slm serve --static` does; `stop()` takes the server away."""
    running = []

    def serve(folder):
        running.append(Running(static_app(folder)))
        return running[-1]

    yield serve
    for server in running:
        server.stop()


@browser
def test_the_page_answers_as_slm_generate_on_llama_cpp_and_again_offline(ascii_llama, tmp_path, serving):
    written = export_web(load(str(ascii_llama)), tmp_path / "web", WebConfig(quant="q8_0"), shard_bytes=24 * 1024)
    assert len(written.model_files) > 1  # split: the page loads the shards as one model
    reference = export_gguf(load(str(ascii_llama)), tmp_path / "reference.q8_0.gguf", "q8_0").path
    native = open_model(str(reference), backend="llamacpp")
    greedy = SamplingConfig(temperature=0, max_new_tokens=24)
    expected_text = "".join(slmkit.generate(native, "small models", greedy, use_template=False))
    messages = [{"role": "user", "content": "what is a small model?"}]
    expected_chat = "".join(slmkit.generate(native, messages, greedy))
    assert expected_text and expected_chat

    server = serving(written.path)
    page = Page(server.url + "/", tmp_path / "profile")
    try:
        info = page.run("window.slm.ready")
        assert info["kind"] == "causal-lm" and info["offline"] is True
        assert page.run("window.slm.complete('small models', {temperature: 0, max_tokens: 24})") == expected_text
        streamed = page.run("(async () => { const pieces = []; const text = await window.slm.chat("
                            f"{json.dumps(messages)}, "
                            "{temperature: 0, max_tokens: 24, onToken: (p) => pieces.push(p)});"
                            " return {text, pieces: pieces.length, stats: window.slm.stats}; })()")
        assert streamed["text"] == expected_chat and streamed["pieces"] > 1
        assert streamed["stats"]["tokens_per_second"] > 0 and streamed["stats"]["time_to_first_token_ms"] > 0
        with pytest.raises(PageError, match="classify needs a classifier"):
            page.run("window.slm.classify('x')")
        assert page.requests_outside(server.url) == []
        # The network gone: the service worker answers the page, the runtime and the model from its cache.
        server.stop()
        page.goto(server.url + "/?threads=1")
        assert page.run("window.slm.ready")["kind"] == "causal-lm"
        assert page.run("window.slm.complete('small models', {temperature: 0, max_tokens: 24})") == expected_text
    finally:
        page.close()


@browser
def test_the_page_classifies_as_onnxruntime_does(bert_tokenizer, tmp_path, serving):  # noqa: F811
    from slmkit.runtime.onnx import OnnxModel

    checkpoint = save(tiny_classifier(), tmp_path / "clf", bert_tokenizer)
    written = export_web(load(str(checkpoint)), tmp_path / "web")
    assert manifest_of(written.path)["runtime"]["name"] == "transformers.js"
    onnx = open_model(str(written.path))  # the folder stands for its model: onnxruntime on the page's graph
    assert isinstance(onnx, OnnxModel) and onnx.path == written.path / "model"
    server = serving(written.path)
    page = Page(server.url + "/", tmp_path / "profile")
    try:
        assert page.run("window.slm.ready")["kind"] == "classifier"
        for text in TEXTS[:3]:
            probabilities = onnx.classify([text], max_length=128).softmax(-1)[0]
            expected = int(probabilities.argmax())
            got = page.run(f"window.slm.classify({json.dumps(text)})")
            assert got["label"] == onnx.config.id2label[expected]
            assert got["score"] == pytest.approx(float(probabilities[expected]), abs=1e-5)
        assert page.requests_outside(server.url) == []
    finally:
        page.close()


@browser
def test_the_page_embeds_as_onnxruntime_does(bert_tokenizer, tmp_path, serving):  # noqa: F811
    from slmkit.runtime.onnx import OnnxModel

    written = export_web(load(str(save(tiny_model("bert"), tmp_path / "enc", bert_tokenizer))), tmp_path / "web")
    onnx = open_model(str(written.path))
    assert isinstance(onnx, OnnxModel) and onnx.kind == "encoder"
    server = serving(written.path)
    page = Page(server.url + "/", tmp_path / "profile")
    try:
        assert page.run("window.slm.ready")["kind"] == "encoder"
        vector = torch.tensor(page.run(f"window.slm.embed({json.dumps(TEXTS[0])})"))
        torch.testing.assert_close(vector, onnx.embed([TEXTS[0]])[0], atol=1e-4, rtol=0)
    finally:
        page.close()


def test_a_recipe_exports_a_web_folder_and_measures_the_model_its_page_runs(ascii_llama, tmp_path):
    from conftest import SAMPLE_TEXT

    from slmkit.pipeline.recipe import parse_recipe
    from slmkit.pipeline.report import write_report
    from slmkit.pipeline.run import run_recipe

    (tmp_path / "sample.txt").write_text(SAMPLE_TEXT)
    recipe = parse_recipe(f"""
name: web
prompts: ["Small models"]
max_new_tokens: 4
stages:
  - stage: export
    name: web
    format: web
    quant: q8_0
  - stage: eval
    data: {tmp_path / "sample.txt"}
    max_length: 64
    models: [original, web]
""", "web.yaml")
    run_dir = run_recipe(recipe, recipe_path="web.yaml", model=str(ascii_llama), out=tmp_path / "run")
    state = json.loads((run_dir / "run.json").read_text())
    assert state["stages"]["web"]["result"]["format"] == "web"
    assert manifest_of(run_dir / "web")["model_files"][0]["path"] == "model/model.gguf"
    measured = state["stages"]["02-eval"]["result"]
    # q8_0 on llama.cpp: the page's model, close to the original.
    assert measured["web"]["token_perplexity"] == pytest.approx(measured["original"]["token_perplexity"], rel=0.02)
    markdown = write_report([run_dir])[0].read_text()
    assert f"slm serve --static {run_dir / 'web'}" in markdown
