"""One exception type for every user-facing failure.

The CLI prints `error: <message>` for these and exits non-zero; anything else is
a bug and keeps its traceback. Messages name the bad file/field/value and the fix.
"""


class SlmError(Exception):
    """A problem with what the user gave us (file, model, flag), not a bug."""

    exit_code = 2


class ModelLoadError(SlmError):
    """The model spec could not be resolved or loaded."""


class DataError(SlmError):
    """A data file is missing or malformed."""


class UnsafeModelError(ModelLoadError):
    """Loading would execute untrusted code (pickle weights, remote code)."""


def first_line(exc: BaseException) -> str:
    """An exception as one line for an error message: its first line of text, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def json_problem(exc, *, with_line: bool = True) -> str:
    """A json.JSONDecodeError as `problem at line L, column C`: json's own messages may end in " at" already
    ("Unterminated string starting at"), which a plain format would double."""
    where = f"line {exc.lineno}, column {exc.colno}" if with_line else f"column {exc.colno}"
    return f"{exc.msg.removesuffix(' at')} at {where}"
