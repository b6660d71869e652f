"""The OpenAI request bodies `slm serve` accepts, as pydantic models (FastAPI validates them and lists them in
the OpenAPI document), and OpenAI's error JSON with `ApiError`, the refusal that carries it.

Unknown fields are refused (`extra="forbid"`) rather than ignored: a client that sends `tools` or `logit_bias`
learns at once that this server does not do them, instead of getting an answer that silently did not. Types
are strict, as OpenAI's API is: `"stream": "yes"` or `"n": "2"` is refused, not coerced (an integer still
does for a float).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

MAX_CHOICES = 8  # `n`: each choice is a row of its own in the decoder
MAX_STOPS = 4  # OpenAI's limit
MAX_EMBEDDING_INPUTS = 256
# JSON levels in a response_format schema. jsonschema walks a schema recursively and runs out of Python's
# stack (1000 frames) near 128 levels of `items`; llguidance takes far more. OpenAI's structured outputs allow
# 10 levels of object nesting (about 20 JSON levels); 64 leaves room for any real schema.
MAX_SCHEMA_DEPTH = 64


def one_or_list(one, many, item=lambda text: text):
    """The list type `many`, which a request may also give as one string `one` (OpenAI's `"stop": "x"` for
    `["x"]`; `item` makes the string a list item). Held as the list, so that a refusal names what is wrong with
    the list: the union `one | many` named its other branch ("input.str: Input should be a valid string" for a
    list of too many inputs). The OpenAPI document still shows both forms."""

    def listed(value):
        if isinstance(value, str):
            return [item(value)]
        if isinstance(value, list):
            return value
        raise PydanticCustomError("list_type", "Input should be a string or a list")

    return Annotated[many, BeforeValidator(listed, json_schema_input_type=one | many)]


def nesting_depth(value: Any) -> int:
    """How many levels of objects and arrays a JSON value nests (a scalar: 0), walked without recursion: a
    deep value is what breaks recursive walkers."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    return deepest


def shallow(schema: dict[str, Any]) -> dict[str, Any]:
    depth = nesting_depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise PydanticCustomError("schema_depth", "nests {depth} levels deep; at most {limit} are accepted",
                                  {"depth": depth, "limit": MAX_SCHEMA_DEPTH})
    return schema


Probability = Annotated[float, Field(gt=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
StopText = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: one_or_list(str, list[TextPart], lambda text: {"type": "text", "text": text})
    name: str | None = None

    def text(self) -> str:
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(Strict):
    name: str = Field(min_length=1, max_length=64)
    # Measured before jsonschema or llguidance reads it.
    schema_: Annotated[dict[str, Any], AfterValidator(shallow)] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """What chat and completion requests share."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: Probability = 1.0
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, lt=1)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repetition_penalty: float = Field(1.0, ge=0.01, le=10)  # far below 1 only overflows the softmax
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: one_or_list(StopText, Annotated[list[StopText], Field(max_length=MAX_STOPS)]) | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        return self.stop or []


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None


class CompletionRequest(Sampling):
    prompt: one_or_list(str, Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)])
    logprobs: int | None = Field(None, ge=0, le=5)
    response_format: ResponseFormat | None = None


class EmbeddingRequest(Strict):
    model: str
    input: one_or_list(str, Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)])
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error JSON, which its clients turn into their typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiError(Exception):
    """A refusal the routes raise; the app answers it with `error_body` and the status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, kind, param, code), headers
