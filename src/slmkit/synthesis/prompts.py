"""What the teacher is asked: the prompts file, and the system prompts of each style.

Orca 2 (Mitra et al., 2023, arXiv:2311.11045) has the teacher answer under a detailed, task-specific system
instruction ("think step by step, explain, then answer"), then writes the training record with a generic
system prompt instead: "prompt erasing". The student learns to reason that way unprompted, instead of
learning to follow the instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmkit.data.loaders import JSONL_SUFFIXES, TEXT_SUFFIXES, _check_file, _read, read_jsonl
from slmkit.errors import DataError

ORCA_TEACHER_SYSTEM = ("You are a careful teacher. Think step by step: first explain the reasoning that leads to "
                       "the answer, one clear step at a time, then state the final answer.")
GENERIC_SYSTEM = "You are a helpful assistant."
STYLES = ("plain", "orca")


@dataclass(frozen=True)
class Style:
    """The system prompt the teacher answers under, and the one the training record keeps (None: no system
    message). `system` is the user's --system."""

    name: str
    teacher_system: str | None
    record_system: str | None


def style_for(name: str, system: str | None) -> Style:
    """plain: the user's --system (if any) both ways; orca: the teacher gets the step-by-step instruction (or
    --system in its place), the record the generic prompt."""
    if name == "orca":
        return Style(name, system or ORCA_TEACHER_SYSTEM, GENERIC_SYSTEM)
    return Style(name, system, system)


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a .jsonl file (`{"prompt": ...}` per line) or a text file (one per line; blank lines are
    skipped); a bad line or record stops with where it is."""
    path = _check_file(path)
    if path.suffix in JSONL_SUFFIXES:
        prompts = [_prompt_of(path, index, record) for index, record in enumerate(read_jsonl(path), start=1)]
    elif path.suffix in TEXT_SUFFIXES:
        prompts = [line.strip() for line in _read(path).splitlines() if line.strip()]
    else:
        raise DataError(f"{path}: prompts come in a .jsonl file ({{\"prompt\": ...}} per line) or a .txt file "
                        "(one per line)")
    if not prompts:
        raise DataError(f"{path}: no prompts (the file is empty)")
    return prompts


def _prompt_of(path: Path, index: int, record: dict) -> str:
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        found = "no 'prompt' field" if "prompt" not in record else "'prompt' is not a non-empty string"
        raise DataError(f"{path}: record {index}: {found}; each line needs {{\"prompt\": \"...\"}}")
    return prompt.strip()
