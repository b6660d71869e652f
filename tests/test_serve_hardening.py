"""`slm serve` refuses hostile request bodies with a 400 that names the field and the limit: schemas too deep
to walk, embedding inputs longer than the context, values of the wrong JSON type (never coerced), and lists
over their limits (the list's error, not a union branch's)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from slmkit.runtime import open_model
from slmkit.server import ServeSettings, create_app
from slmkit.server.grammar import Grammars
from slmkit.server.protocol import MAX_SCHEMA_DEPTH, nesting_depth

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": "tiny", "prompt": "hi", "max_tokens": 4}


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return open_model(str(tiny_llama_dir))


def client_of(lm, **settings) -> TestClient:
    return TestClient(create_app(lm, ServeSettings(name="tiny", **settings)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(lm):
    with client_of(lm) as running:
        yield running


def refused(response, message: str, param: str | None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["message"], error["type"], error["param"]) == (message, "invalid_request_error", param)


def items_nested(levels: int) -> dict:
    """A schema `levels` JSON levels deep: arrays of arrays of ... strings."""
    schema = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"type": "array", "items": schema}
    return schema


def with_schema(body: dict, schema: dict) -> dict:
    return {**body, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def test_nesting_depth_walks_a_value_deeper_than_the_interpreter_stack():
    value = 1
    for level in range(100_000):
        value = [value] if level % 2 else {"a": value}
    assert nesting_depth(value) == 100_000
    assert nesting_depth({"a": [1, {"b": []}], "c": {}}) == 4 and nesting_depth("text") == 0


@pytest.mark.parametrize("route, body", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
@pytest.mark.parametrize("schema, depth", [
    (items_nested(300), 300),
    (items_nested(MAX_SCHEMA_DEPTH + 1), MAX_SCHEMA_DEPTH + 1),
    ({"type": "object", "properties": {"a": {"const": items_nested(100)}}}, 103),  # deep inside a keyword's value
], ids=["300", "one-over", "const"])
def test_a_schema_nested_past_the_limit_is_a_400_before_any_grammar(client, monkeypatch, route, body, schema, depth):
    def never(*args):
        raise AssertionError("the grammar was built")

    monkeypatch.setattr(Grammars, "compile", never)
    refused(client.post(route, json=with_schema(body, schema)),
            f"response_format.json_schema.schema: nests {depth} levels deep; at most {MAX_SCHEMA_DEPTH} are "
            "accepted", "response_format.json_schema.schema")


def test_a_schema_at_the_limit_is_enforced(client):
    response = client.post("/v1/chat/completions", json=with_schema(CHAT, items_nested(MAX_SCHEMA_DEPTH)))
    assert response.status_code == 200, response.text


def test_an_embedding_input_longer_than_the_context_is_refused_not_cut(client, lm):
    text = "small models run locally " * 40
    tokens = len(lm.tokenizer(text).input_ids)
    assert tokens > lm.context == 128
    response = client.post("/v1/embeddings", json={"model": "tiny", "input": ["fits", text]})
    refused(response, f"input[1] has {tokens} tokens; the context holds 128 tokens", "input")
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_embeddings_hold_to_the_served_context_as_prompts_do(lm):
    text = "small models run locally " * 3
    tokens = len(lm.tokenizer(text).input_ids)
    assert 16 < tokens <= lm.context
    with client_of(lm, ctx=16) as small:
        refused(small.post("/v1/embeddings", json={"model": "tiny", "input": text}),
                f"input[0] has {tokens} tokens; the context holds 16 tokens", "input")
        refused(small.post("/v1/completions", json={**COMPLETION, "prompt": text}),
                f"the prompt has {tokens} tokens and max_tokens 4; the context holds 16 tokens (prompt + answer)",
                "prompt")
        assert small.post("/v1/embeddings", json={"model": "tiny", "input": "small models"}).status_code == 200


@pytest.mark.parametrize("route, change, message", [
    ("/v1/chat/completions", {"stream": "yes"}, "stream: Input should be a valid boolean"),
    ("/v1/chat/completions", {"stream": 1}, "stream: Input should be a valid boolean"),
    ("/v1/chat/completions", {"logprobs": "true"}, "logprobs: Input should be a valid boolean"),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage: Input should be a valid boolean"),
    ("/v1/chat/completions", {"n": "2"}, "n: Input should be a valid integer"),
    ("/v1/chat/completions", {"n": 2.0}, "n: Input should be a valid integer"),
    ("/v1/chat/completions", {"max_tokens": True}, "max_tokens: Input should be a valid integer"),
    ("/v1/chat/completions", {"seed": "7"}, "seed: Input should be a valid integer"),
    ("/v1/chat/completions", {"temperature": "0.5"}, "temperature: Input should be a valid number"),
    ("/v1/chat/completions", {"top_p": True}, "top_p: Input should be a valid number"),
    ("/v1/chat/completions", {"user": 7}, "user: Input should be a valid string"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "name": 1}]},
     "messages.0.name: Input should be a valid string"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {}, "strict": "yes"}}}, "response_format.json_schema.strict: Input should be a valid "
                                                       "boolean"),
    ("/v1/completions", {"logprobs": True}, "logprobs: Input should be a valid integer"),
    ("/v1/completions", {"max_tokens": "4"}, "max_tokens: Input should be a valid integer"),
])
def test_values_of_the_wrong_type_are_refused_not_coerced(client, route, change, message):
    body = {**(CHAT if route == "/v1/chat/completions" else COMPLETION), **change}
    response = client.post(route, json=body)
    refused(response, message, message.partition(":")[0])


@pytest.mark.parametrize("change", [{"temperature": 1}, {"temperature": 0.0}, {"top_p": 1}, {"presence_penalty": -2},
                                    {"repetition_penalty": 1.0}, {"min_p": 0}])
def test_a_json_number_of_either_form_is_a_float(client, change):
    assert client.post("/v1/chat/completions", json={**CHAT, **change}).status_code == 200


@pytest.mark.parametrize("route, change, message", [
    ("/v1/embeddings", {"input": ["a"] * 5000}, "input: List should have at most 256 items after validation, not 5000"),
    ("/v1/embeddings", {"input": []}, "input: List should have at least 1 item after validation, not 0"),
    ("/v1/embeddings", {"input": 5}, "input: Input should be a string or a list"),
    ("/v1/embeddings", {"input": [17, 42]}, "input.0: Input should be a valid string"),
    ("/v1/completions", {"prompt": ["a"] * 9}, "prompt: List should have at most 8 items after validation, not 9"),
    ("/v1/completions", {"prompt": {"text": "a"}}, "prompt: Input should be a string or a list"),
    ("/v1/completions", {"stop": ["a"] * 5}, "stop: List should have at most 4 items after validation, not 5"),
    ("/v1/completions", {"stop": ["a", 1]}, "stop.1: Input should be a valid string"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages.0.content.0.type: Input should be 'text'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]},
     "messages.0.content: Input should be a string or a list"),
])
def test_a_string_or_list_field_names_what_is_wrong_with_the_list(client, route, change, message):
    base = {"/v1/embeddings": {"model": "tiny", "input": "a"}, "/v1/completions": COMPLETION,
            "/v1/chat/completions": CHAT}[route]
    refused(client.post(route, json={**base, **change}), message, message.partition(":")[0])


@pytest.mark.parametrize("route, change", [
    ("/v1/embeddings", {"input": "small models"}), ("/v1/embeddings", {"input": ["small models", "run"]}),
    ("/v1/completions", {"prompt": "small", "stop": "x"}), ("/v1/completions", {"prompt": ["a", "b"], "stop": ["x"]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
])
def test_a_string_or_a_list_both_still_work(client, route, change):
    base = {"/v1/embeddings": {"model": "tiny"}, "/v1/completions": COMPLETION, "/v1/chat/completions": CHAT}[route]
    assert client.post(route, json={**base, **change}).status_code == 200


def test_the_openapi_document_shows_both_forms_of_a_string_or_list_field(client):
    document = client.get("/openapi.json").json()
    embedding = document["components"]["schemas"]["EmbeddingRequest"]["properties"]["input"]
    assert [form["type"] for form in embedding["anyOf"]] == ["string", "array"]
    assert embedding["anyOf"][1]["maxItems"] == 256


@pytest.mark.parametrize("levels, message, param", [
    (500, "messages.0: Input should be a valid dictionary or object to extract fields from", "messages.0"),
    (100_000, "There was an error parsing the body", None),  # past what Python's JSON parser takes
])
def test_a_body_nested_deep_in_any_field_is_a_400(client, levels, message, param):
    body = b'{"model": "tiny", "messages": [' + b"[" * levels + b"]" * levels + b"]}"
    refused(client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}),
            message, param)


def test_two_apps_in_one_process_keep_their_own_state(lm):
    """Routes read the app's state from the request: two apps on one model keep their names, keys, contexts,
    metrics and engines apart, and closing one leaves the other serving."""
    first = TestClient(create_app(lm, ServeSettings(name="first", ctx=32)))
    second = TestClient(create_app(lm, ServeSettings(name="second", api_key="key", ctx=64)))
    with second:
        with first:
            assert first.app.state.engine is not second.app.state.engine
            assert first.get("/v1/models").json()["data"][0] | {"created": 0} == {
                "id": "first", "object": "model", "created": 0, "owned_by": "slmkit", "context_length": 32}
            assert first.post("/v1/chat/completions", json={**CHAT, "model": "first"}).status_code == 200
            assert first.post("/v1/chat/completions", json=CHAT).json()["error"]["message"] == (
                "model 'tiny' is not served here; this server serves 'first'")
            assert second.get("/v1/models").status_code == 401  # the second app's key, not the first's (none)
        key = {"Authorization": "Bearer key"}
        assert second.get("/v1/models", headers=key).json()["data"][0]["context_length"] == 64
        greedy = {**COMPLETION, "model": "second", "temperature": 0}  # a sampled end token would end it early
        answer = second.post("/v1/completions", json=greedy, headers=key).json()
        assert answer["model"] == "second" and answer["usage"]["completion_tokens"] == 4
        metrics = second.get("/metrics", headers=key).text
    assert 'route="/v1/chat/completions"' not in metrics  # only the first app answered chat
    assert 'slm_requests_total{route="/v1/completions",status="200"} 1.0' in metrics
