"""The routes where the model works: /v1/chat/completions and /v1/completions (rows decoded by the app's engine)
and /v1/embeddings. Each reads the app's state (`create_app` sets it) through `request.app.state`."""

from __future__ import annotations

import base64
import secrets
import threading

import numpy as np
import torch
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from slmkit.runtime.generate import applies_template, prompt_ids, text_ids
from slmkit.runtime.interface import Model
from slmkit.runtime.sampling import SamplingConfig
from slmkit.server.answers import ChatShape, CompletionShape, InFlight
from slmkit.server.engine import Row, RowSampler
from slmkit.server.grammar import Grammar
from slmkit.server.protocol import ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, Sampling

router = APIRouter()
EMBEDDING = threading.Lock()  # one embedding batch at a time: a worker thread each would only fight over the cores


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request):
    state = request.app.state
    check_model(state, body.model)
    check_generates(state, "/v1/chat/completions")
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    ids = prompt_ids(state.lm.tokenizer, messages, applies_template(state.lm))
    grammar = await grammar_of(state, body)
    top = (body.top_logprobs or 0) if body.logprobs else None
    shape = ChatShape(state.settings.name, f"chatcmpl-{secrets.token_hex(12)}", top)
    flight = InFlight(request, len(ids))
    return await flight.answer(rows_for_prompt(state, ids, body, grammar, top, flight.emit, 0), body, shape, grammar)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = request.app.state
    check_model(state, body.model)
    check_generates(state, "/v1/completions")
    prompts = [text_ids(state.lm.tokenizer, text) for text in body.prompt]
    grammar = await grammar_of(state, body)
    top = body.logprobs
    shape = CompletionShape(state.settings.name, f"cmpl-{secrets.token_hex(12)}", top)
    flight = InFlight(request, sum(map(len, prompts)))
    rows = [row for number, ids in enumerate(prompts)  # choices numbered prompt by prompt, n each
            for row in rows_for_prompt(state, ids, body, grammar, top, flight.emit, number * body.n)]
    return await flight.answer(rows, body, shape, grammar)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    state = request.app.state
    check_model(state, body.model)
    texts, context = body.input, state.context
    counts = [len(text_ids(state.lm.tokenizer, text)) for text in texts]  # as the runtime embeds them
    for number, count in enumerate(counts):
        if count == 0:
            raise ApiError(400, f"input[{number}] has no tokens", param="input")
        if count > context:  # the same limit as a prompt's (--ctx, or the model's): never cut
            raise ApiError(400, f"input[{number}] has {count} tokens; the context holds {context} tokens",
                           param="input", code="context_length_exceeded")
    vectors = await run_in_threadpool(embed_locked, state.lm, texts)
    vectors = torch.nn.functional.normalize(vectors, dim=-1)  # unit length, as OpenAI's embeddings are
    data = []
    for index, vector in enumerate(vectors):
        values = vector.numpy().astype(np.float32)
        encoded = (base64.b64encode(values.tobytes()).decode() if body.encoding_format == "base64"
                   else values.tolist())
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    state.metrics.prompt_tokens.inc(sum(counts))
    return {"object": "list", "data": data, "model": state.settings.name,
            "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}


def check_model(state: State, name: str) -> None:
    served = state.settings.name
    if name != served:
        raise ApiError(404, f"model {name!r} is not served here; this server serves {served!r}",
                       "not_found_error", "model", "model_not_found")


def check_generates(state: State, route: str) -> None:
    if state.engine is None:
        raise ApiError(400, f"{state.settings.name} is an {state.lm.kind} model: it serves /v1/embeddings, "
                       f"not {route}")


async def grammar_of(state: State, body: Sampling) -> Grammar | None:
    """The grammar a JSON response_format asks for, compiled off the event loop; None for plain text."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if body.stop:
        raise ApiError(400, "stop cannot be combined with a JSON response_format (it would cut the JSON)",
                       param="stop")
    schema = fmt.json_schema.schema_ if fmt.json_schema else None
    return await run_in_threadpool(state.grammars.compile, fmt.type, schema, "response_format")


def rows_for_prompt(state: State, ids: list[int], body: Sampling, grammar: Grammar | None,
                    top_logprobs: int | None, emit, first: int) -> list[Row]:
    """The `body.n` rows answering one prompt, numbered from `first`; refused if prompt + answer overflow."""
    context = state.context
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if not ids:
        raise ApiError(400, "the prompt has no tokens", param="prompt")
    if len(ids) >= context or (max_tokens and len(ids) + max_tokens > context):
        asked = f" and max_tokens {max_tokens}" if max_tokens else ""
        raise ApiError(400, f"the prompt has {len(ids)} tokens{asked}; the context holds {context} "
                       "tokens (prompt + answer)", param="messages" if hasattr(body, "messages") else "prompt",
                       code="context_length_exceeded")
    max_tokens = max_tokens or context - len(ids)
    rows = []
    for choice in range(body.n):
        seed = None if body.seed is None else (body.seed + choice) % 2**63
        sampling = SamplingConfig(body.temperature, body.top_p, body.top_k, body.min_p, body.repetition_penalty,
                                  seed, max_tokens)
        sampler = RowSampler(state.lm.tokenizer, sampling, state.ends, presence=body.presence_penalty,
                             frequency=body.frequency_penalty, stops=body.stops(), grammar=grammar,
                             top_logprobs=top_logprobs)
        rows.append(Row(ids, sampler, max_tokens, emit=lambda event, index=first + choice: emit(index, event)))
    return rows


def embed_locked(lm: Model, texts: list[str]) -> torch.Tensor:
    with EMBEDDING:
        return lm.embed(texts)
