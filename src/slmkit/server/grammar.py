"""`response_format`: JSON output enforced token by token with llguidance, checked with jsonschema at the end.

llguidance refuses a schema keyword it cannot enforce ("Unimplemented keys: [...]") instead of ignoring it, so
an unsupported schema is a 400 that names the keyword, never unconstrained output. The options below are fixed
by the server (they override a schema's own `x-guidance`): strict mode, and no free whitespace between tokens,
which a small model can otherwise emit until max_tokens runs out.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from slmkit.errors import SlmError

COMPILE_OPTIONS = {"lenient": False, "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class Grammar:
    """One request's `response_format`: a matcher per row, and the check of each finished answer."""

    def __init__(self, tokenizer, text: str, schema: dict | None):
        self.tokenizer, self.text, self.schema = tokenizer, text, schema

    def matcher(self) -> Matcher:
        from llguidance import LLMatcher

        return Matcher(LLMatcher(self.tokenizer, self.text, log_level=0))

    def problem(self, answer: str) -> str | None:
        """Why a finished answer does not satisfy the format (None: it does)."""
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as exc:
            return f"the output is not JSON ({exc.msg})"
        if self.schema is None:
            return None if isinstance(value, dict) else "the output is not a JSON object"
        from jsonschema.validators import validator_for

        error = next(iter(validator_for(self.schema)(self.schema).iter_errors(value)), None)
        return None if error is None else f"the output does not match the schema: {error.message}"


class Matcher:
    """The grammar's state in one row: which tokens may come next, and the tokens chosen so far."""

    def __init__(self, matcher):
        self.state = matcher

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits [1, vocab] of every token the grammar forbids here to -inf."""
        # One bit per token, least significant first (llguidance's own bitmask layout).
        bits = np.unpackbits(np.frombuffer(self.state.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = torch.from_numpy(bits[:logits.shape[-1]].astype(bool))
        width = len(allowed)
        logits[0, :width][~allowed.to(logits.device)] = float("-inf")
        logits[0, width:] = float("-inf")  # rows of a padded vocabulary the tokenizer does not have

    def consume(self, token: int) -> None:
        if not self.state.consume_token(token):
            raise SlmError(f"the grammar refused a token it allowed ({self.state.get_error()})")

    def finished(self) -> bool:
        """The grammar admits nothing more (the answer is complete)."""
        return self.state.is_stopped()


class Grammars:
    """The model's tokenizer as llguidance reads it (built once: about a second) and the formats compiled
    against it."""

    def __init__(self, tokenizer, vocab_size: int, stop_tokens: set[int]):
        self.hf_tokenizer, self.vocab_size, self.stop_tokens = tokenizer, vocab_size, sorted(stop_tokens)
        self._tokenizer = None

    def _llguidance_tokenizer(self):
        if self._tokenizer is None:
            import llguidance.hf

            self._tokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer, n_vocab=self.vocab_size,
                                                           eos_token=self.stop_tokens)
        return self._tokenizer

    def compile(self, kind: str, schema: dict | None, where: str) -> Grammar | None:
        """The grammar of a response_format (`kind` text: None). `where` names the field in error messages."""
        if kind == "text":
            return None
        from llguidance import LLMatcher

        if kind == "json_schema":
            if schema is None:
                raise SlmError(f"{where}.json_schema is required when type is json_schema")
            check_schema(schema, f"{where}.json_schema.schema")
        else:
            schema = None
        text = LLMatcher.grammar_from_json_schema(schema if schema is not None else {"type": "object"},
                                                  overrides=COMPILE_OPTIONS)
        tokenizer = self._llguidance_tokenizer()
        problem = LLMatcher.validate_grammar(text, tokenizer)
        if problem:
            raise SlmError(f"{where}: this schema cannot be enforced ({problem})")
        return Grammar(tokenizer, text, schema)


def check_schema(schema: dict, where: str) -> None:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise SlmError(f"{where} is not a valid JSON Schema: {exc.message}") from None
