"""`slm serve`: the official OpenAI client against a running server on tiny models, and every hardening rule."""

from __future__ import annotations

import functools
import json
import socket
import threading
import time

import httpx2 as httpx
import jsonschema
import openai
import pytest
import torch

import slmkit
from slmkit.runtime import SamplingConfig, generate, open_model
from slmkit.server import ServeSettings, create_app
from slmkit.server.server import bind, url_of
from conftest import run_slm, tiny_model

BOUNDED_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n", "color"],
                  "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
                                 "color": {"enum": ["red", "green", "blue"]}}}


class Running:
    """A uvicorn server on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.app, self.sock = app, bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    @property
    def engine(self):
        return self.app.state.engine

    def client(self, key: str = "none", **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **options)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start(lm, **settings) -> Running:
    return Running(create_app(lm, ServeSettings(name="tiny", **settings)))


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return open_model(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def server(lm):
    running = start(lm)
    yield running
    running.stop()


@pytest.fixture
def slow_lm(tiny_llama_dir):
    """The tiny model taking 40 ms a forward pass: requests stay long enough in their slots to observe."""
    lm = open_model(str(tiny_llama_dir))
    forward = lm.model.forward

    @functools.wraps(forward)  # the same signature: the runtime reads which arguments forward takes
    def slow(*args, **kwargs):
        time.sleep(0.04)
        return forward(*args, **kwargs)

    lm.model.forward = slow
    return lm


def chat(client, content="hello", **options):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                          **{"max_tokens": 12, **options})


def test_chat_answer_is_what_slm_generate_writes_and_usage_counts_tokens(server, lm):
    answer = chat(server.client(), "What is small?", temperature=0)
    expected = "".join(generate(lm, [{"role": "user", "content": "What is small?"}],
                                SamplingConfig(temperature=0, max_new_tokens=12)))
    assert answer.choices[0].message.content == expected
    prompt = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is small?"}],
                                              add_generation_prompt=True)["input_ids"]
    assert answer.usage.prompt_tokens == len(prompt)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streamed_completion_equals_the_whole_one_and_ends_with_usage(server):
    client = server.client()
    whole = client.completions.create(model="tiny", prompt="The small model", max_tokens=16, seed=5)
    chunks = list(client.completions.create(model="tiny", prompt="The small model", max_tokens=16, seed=5,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == whole.choices[0].finish_reason


def test_n_choices_are_seeded_rows_and_concurrent_requests_answer_as_alone(server):
    client = server.client()
    first = chat(client, n=3, seed=11, temperature=1.0)
    again = chat(client, n=3, seed=11, temperature=1.0)
    texts = [choice.message.content for choice in first.choices]
    assert [choice.index for choice in first.choices] == [0, 1, 2]
    assert texts == [choice.message.content for choice in again.choices] and len(set(texts)) > 1
    prompts = [f"question number {number}" for number in range(6)]
    alone = [chat(client, prompt, temperature=0).choices[0].message.content for prompt in prompts]
    together = [None] * len(prompts)

    def ask(number):
        together[number] = chat(server.client(), prompts[number], temperature=0).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(number,)) for number in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_stop_strings_cut_the_answer_before_them(server):
    client = server.client()
    full = client.completions.create(model="tiny", prompt="Small models", max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[6:9]
    cut = client.completions.create(model="tiny", prompt="Small models", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="Small models", max_tokens=24, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == cut.choices[0].text


def test_logprobs_are_the_models_own_and_greedy_picks_the_top_one(server, lm):
    answer = chat(server.client(), "hi", temperature=0, logprobs=True, top_logprobs=3, max_tokens=5)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens + (answer.choices[0].finish_reason == "stop")
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert sum(torch.tensor([top.logprob for top in entry.top_logprobs]).exp()) <= 1 + 1e-5
    completion = server.client().completions.create(model="tiny", prompt="hi", max_tokens=4, logprobs=2,
                                                    temperature=0)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) >= 1
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


def test_json_schema_output_parses_and_validates(server):
    client = server.client()
    schema_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": BOUNDED_SCHEMA}}
    for seed in range(3):
        answer = chat(client, "give me json", max_tokens=40, seed=seed, temperature=1.0,
                      response_format=schema_format)
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content), BOUNDED_SCHEMA)
    streamed = chat(client, "json please", max_tokens=40, seed=7, response_format=schema_format, stream=True)
    jsonschema.validate(json.loads("".join(chunk.choices[0].delta.content or "" for chunk in streamed)),
                        BOUNDED_SCHEMA)


@pytest.mark.parametrize("schema, keyword", [({"type": "array", "uniqueItems": True}, "uniqueItems"),
                                             ({"not": {"type": "string"}}, "not"),
                                             ({"type": 5}, "not a valid JSON Schema")])
def test_a_schema_that_cannot_be_enforced_is_a_400_naming_why(server, schema, keyword):
    with pytest.raises(openai.BadRequestError) as refused:
        chat(server.client(), response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert keyword in refused.value.body["message"] and refused.value.body["type"] == "invalid_request_error"


def test_embeddings_are_unit_mean_pooled_hidden_states(server, lm):
    response = server.client().embeddings.create(model="tiny", input=["small models", "run locally"])
    vectors = torch.tensor([item.embedding for item in response.data])
    expected = torch.nn.functional.normalize(lm.embed(["small models", "run locally"]), dim=-1)
    assert torch.allclose(vectors, expected, atol=1e-5)
    assert response.usage.prompt_tokens == sum(len(lm.tokenizer(text).input_ids)
                                               for text in ["small models", "run locally"])


def test_an_encoder_serves_embeddings_and_refuses_chat(tmp_path, tiny_tokenizer):
    directory = tmp_path / "tiny-bert"
    slmkit.save(tiny_model("bert"), directory, tiny_tokenizer, stage="test")
    running = start(open_model(str(directory)))
    try:
        response = running.client().embeddings.create(model="tiny", input="small models")
        assert len(response.data[0].embedding) == 32
        assert abs(torch.tensor(response.data[0].embedding).norm() - 1) < 1e-5
        with pytest.raises(openai.BadRequestError, match="serves /v1/embeddings"):
            chat(running.client())
    finally:
        running.stop()


@pytest.mark.parametrize("body, where", [
    ({"temperature": 5}, "temperature"), ({"n": 0}, "n"), ({"n": 99}, "n"), ({"top_p": 0}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"max_tokens": 0}, "max_tokens"),
    ({"top_logprobs": 3}, "logprobs"), ({"tools": []}, "tools"), ({"messages": []}, "messages"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"seed": -1}, "seed"),
    ({"response_format": {"type": "xml"}}, "response_format"),
])
def test_every_invalid_parameter_is_a_400_in_openais_shape(server, body, where):
    request = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    response = httpx.post(server.url + "/v1/chat/completions", json=request)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and where in error["message"]


def test_malformed_json_unknown_model_and_prompt_over_the_context(server, lm):
    response = httpx.post(server.url + "/v1/chat/completions", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()
    with pytest.raises(openai.NotFoundError, match="not served here"):
        server.client().chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    long_prompt = "small models run locally " * 40
    tokens = len(lm.tokenizer(long_prompt).input_ids)
    with pytest.raises(openai.BadRequestError) as refused:
        server.client().completions.create(model="tiny", prompt=long_prompt, max_tokens=4)
    message = refused.value.body["message"]
    assert f"{tokens} tokens" in message and f"holds {lm.context}" in message
    assert refused.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match=f"max_tokens {100 + lm.context};"):
        server.client().completions.create(model="tiny", prompt="hi", max_tokens=100 + lm.context)


def test_the_key_guards_every_route_of_the_openapi_document_but_health(lm):
    running = start(lm, api_key="s3cret")
    try:
        paths = list(running.app.openapi()["paths"]) + ["/", "/openapi.json", "/docs"]
        assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/metrics"} <= set(paths)
        for path in paths:
            if path == "/health":
                continue
            method = httpx.post if path.startswith("/v1/") and path != "/v1/models" else httpx.get
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                response = method(running.url + path, headers=headers)
                assert response.status_code == 401, path
                assert response.json()["error"]["type"] == "authentication_error"
            assert method(running.url + path, headers={"Authorization": "Bearer s3cret"}).status_code != 401
        assert httpx.get(running.url + "/health").status_code == 200
        assert httpx.get(running.url + "/", auth=("user", "s3cret")).status_code == 200  # the page: HTTP Basic
        with pytest.raises(openai.AuthenticationError):
            chat(running.client("wrong"))
        assert chat(running.client("s3cret")).choices
    finally:
        running.stop()


def test_no_cors_headers_unless_an_origin_is_allowed_and_never_a_wildcard_with_credentials(server, lm):
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.get(server.url + "/v1/models",
                                                          headers={"Origin": "http://evil.example"}).headers
    assert "access-control-allow-origin" not in httpx.options(server.url + "/v1/models", headers=preflight).headers
    running = start(lm, cors_origins=["http://app.example"])
    try:
        allowed = httpx.get(running.url + "/v1/models", headers={"Origin": "http://app.example"}).headers
        assert allowed["access-control-allow-origin"] == "http://app.example"
        assert "access-control-allow-credentials" not in allowed
        other = httpx.get(running.url + "/v1/models", headers={"Origin": "http://evil.example"}).headers
        assert "access-control-allow-origin" not in other
    finally:
        running.stop()


def test_a_full_queue_answers_429_with_retry_after_and_loses_no_accepted_request(slow_lm):
    running = start(slow_lm, max_concurrency=1, max_queue=2)
    results = []

    def ask():
        try:
            results.append(chat(running.client(), max_tokens=8, temperature=0).choices[0].finish_reason)
        except openai.RateLimitError as exc:
            results.append(exc.response.headers.get("retry-after"))

    try:
        threads = [threading.Thread(target=ask) for _ in range(6)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        accepted = [result for result in results if result in ("stop", "length")]
        assert len(results) == 6 and len(accepted) >= 3 and results.count("1") == 6 - len(accepted)
        metrics = httpx.get(running.url + "/metrics").text
        assert 'slm_requests_total{route="/v1/chat/completions",status="429"}' in metrics
    finally:
        running.stop()


def wait_until(condition, seconds: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_client_that_disconnects_frees_its_slot_within_a_second(slow_lm):
    running = start(slow_lm, max_concurrency=2)
    try:
        # Greedy: the tiny model answers "hello" up to max_tokens (a sampled answer could end at once).
        request = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100,
                   "temperature": 0, "stream": True}
        with httpx.stream("POST", running.url + "/v1/chat/completions", json=request) as response:
            lines = response.iter_lines()  # kept open until the block ends: then the client leaves
            next(lines)
            wait_until(lambda: running.engine.busy == 1, 2)
            time.sleep(0.3)
            assert running.engine.busy == 1  # still writing to the client
        wait_until(lambda: running.engine.busy == 0, 1.0)
        with pytest.raises(httpx.ReadTimeout):  # not streamed: the client gives up waiting
            httpx.post(running.url + "/v1/chat/completions", json={**request, "stream": False}, timeout=0.5)
        wait_until(lambda: running.engine.busy == 0, 1.0)
    finally:
        running.stop()


def test_a_client_that_leaves_while_queued_gives_its_place_back_at_once(slow_lm):
    running = start(slow_lm, max_concurrency=1, max_queue=1)
    try:
        long_answer = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100,
                       "temperature": 0}
        with httpx.stream("POST", running.url + "/v1/chat/completions", json={**long_answer, "stream": True}) as busy:
            lines = busy.iter_lines()  # kept: a dropped iterator closes the response, and the server frees the slot
            next(lines)  # the one slot is taken for about 3 s
            with pytest.raises(httpx.ReadTimeout):  # waits in the one queue place, then its client leaves
                httpx.post(running.url + "/v1/chat/completions", json=long_answer, timeout=0.3)
            wait_until(lambda: running.engine.queued == 0, 1.0)
            assert running.engine.busy == 1
            assert chat(running.client(), max_tokens=2, temperature=0).choices  # queued, not refused
    finally:
        running.stop()


def test_a_request_over_the_timeout_is_stopped(slow_lm):
    running = start(slow_lm, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as stopped:
            chat(running.client(), max_tokens=100, temperature=0)  # greedy "hello": it runs to max_tokens
        assert stopped.value.status_code == 504 and "--timeout" in stopped.value.body["message"]
        assert time.monotonic() - started < 3  # 0.5 s and the round trip, with room for a loaded machine
        wait_until(lambda: running.engine.busy == 0, 1.0)
        assert chat(running.client(), max_tokens=2).choices  # the server goes on
    finally:
        running.stop()


def test_metrics_count_tokens_latency_and_show_queue_and_slots(server):
    chat(server.client(), max_tokens=3)
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("slm_prompt_tokens_total", "slm_generated_tokens_total", "slm_time_to_first_token_seconds_count",
                 "slm_request_latency_seconds_bucket", "slm_queue_depth", "slm_busy_slots"):
        assert name in metrics
    generated = next(line for line in metrics.splitlines() if line.startswith("slm_generated_tokens_total"))
    assert float(generated.split()[-1]) >= 3


def test_a_port_in_use_is_one_line_at_start_up(tiny_llama_dir):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        result = run_slm("serve", str(tiny_llama_dir), "--port", str(port), timeout=60)
    finally:
        taken.close()
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: already in use; choose another " \
                                    "--port or --host"


def test_a_gguf_on_llama_cpp_answers_as_torch_and_batches_rows_that_arrive_apart(tiny_llama_dir, server, tmp_path):
    pytest.importorskip("llama_cpp")
    gguf = tmp_path / "tiny.f32.gguf"
    slmkit.export(slmkit.load(str(tiny_llama_dir)), gguf, slmkit.GGUFConfig(quant="f32"))
    lm = open_model(str(gguf))
    assert lm.backend == "llamacpp"
    running = start(lm, max_concurrency=3)
    try:
        prompts = [f"row {number} of small models" for number in range(5)]
        on_torch = [server.client().completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
                    .choices[0].text for prompt in prompts]
        answers = [None] * len(prompts)

        def ask(number):
            answers[number] = running.client().completions.create(
                model="tiny", prompt=prompts[number], max_tokens=10 + 5 * number, temperature=0).choices[0].text

        threads = [threading.Thread(target=ask, args=(number,)) for number in range(len(prompts))]
        for thread in threads:
            thread.start()
            time.sleep(0.01)  # rows join the running ones at the next step
        for thread in threads:
            thread.join()
        # Longer answers start with the 10 tokens torch wrote (greedy, the same float32 weights).
        assert [answer[:len(expected)] for answer, expected in zip(answers, on_torch)] == on_torch
        assert chat(running.client(), n=2, seed=1).choices[1].message.content  # seeded rows on llama.cpp too
        schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": BOUNDED_SCHEMA}}
        jsonschema.validate(json.loads(chat(running.client(), max_tokens=40, response_format=schema)
                                       .choices[0].message.content), BOUNDED_SCHEMA)
    finally:
        running.stop()


def test_rows_joining_a_running_torch_batch_decode_as_they_would_alone(lm):
    from slmkit.runtime.torch_rows import TorchBatch

    def greedy(batch, logits, rows):
        return [int(logits[row].argmax()) for row in range(rows)]

    def alone(ids, steps):
        batch = TorchBatch(lm)
        tokens = greedy(batch, batch.start([ids]), 1)
        for _ in range(steps - 1):
            tokens += greedy(batch, batch.step(tokens[-1:]), 1)
        return tokens

    short, wide = lm.tokenizer("row two").input_ids, lm.tokenizer("a wider prompt than the running row " * 3).input_ids
    batch = TorchBatch(lm)
    first = greedy(batch, batch.start([short]), 1)
    first += greedy(batch, batch.step(first[-1:]), 1)
    second = greedy(batch, batch.join([wide]), 1)  # wider: the running row is padded on the left
    for _ in range(3):
        logits = batch.step([first[-1], second[-1]])
        first.append(int(logits[0].argmax()))
        second.append(int(logits[1].argmax()))
    batch.keep([1, 0])  # reordered
    logits = batch.step([second[-1], first[-1]])
    second.append(int(logits[0].argmax()))
    batch.keep([0])  # the short row leaves: the columns only it used go
    assert batch.attention_mask.shape[1] == len(wide) + 4 == batch.cache.layers[0].keys.shape[2]
    second.append(int(batch.step(second[-1:])[0].argmax()))
    assert first == alone(short, 5) and second == alone(wide, 6)


def test_fuzzed_requests_from_the_openapi_document_never_get_a_5xx(tiny_llama_dir):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    lm = open_model(str(tiny_llama_dir))
    # LlamaConfig's default end token (2) is the ordinary character "!" in the tiny vocabulary, which a JSON
    # grammar allows inside a string: an answer would end there unfinished (a real model's end token is special).
    lm.model.generation_config.eos_token_id = lm.tokenizer.eos_token_id

    # A small --ctx keeps the answers short (max_tokens defaults to what the context leaves).
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(lm, ServeSettings(name="tiny", ctx=40)))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def never_a_server_error(case):
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # past the model check, into generation
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)

        never_a_server_error()


def test_slm_serve_prints_where_it_listens_answers_and_stops_on_ctrl_c(tiny_llama_dir):
    import os
    import re
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "slmkit.cli.main", "serve", str(tiny_llama_dir), "--port", "0",
                                "--api-key", "k"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = process.stderr.readline()
        url = re.search(r"on (http://127\.0\.0\.1:\d+):", line).group(1)
        assert "tiny-llama (torch)" in line and "(key required)" in line
        assert httpx.get(url + "/health").json()["status"] == "ok"
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert client.models.list().data[0].id == "tiny-llama"
        answer = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=4)
        assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens >= 1
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0 and process.stderr.read().strip().endswith("stopped")
