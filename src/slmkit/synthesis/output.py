"""The files a synth run writes, record by record, so a crash loses at most the answer being written.

    data.jsonl          kept answers: {"messages": [system?, user, assistant], "meta": {...}}, what
                        `slm finetune` trains on (it reads `messages` and ignores `meta`)
    data.dropped.jsonl  dropped answers, in the same shape plus "dropped": the reason, to see what the filters
                        threw away (and so a re-run does not ask for them again)

`meta` names the prompt (its index in the prompts file), the sample of it, the teacher and the style: a
re-run skips every (prompt, sample) pair either file holds, and refuses files written for other prompts, by
another teacher or in another style. Each record is one write of one line and flushed to the disk; a last
line without its newline is what a crash left mid-write, and it is cut off before the run goes on.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.errors import DataError, SlmError, json_problem
from slmkit.models.checkpoint import check_not_input, check_writable


def dropped_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.dropped{out.suffix}")


def check_output_path(out: str | Path, reads: Iterable[str | Path | None] = ()) -> Path:
    """`out` (and the dropped file beside it) can be appended to and is none of `reads` (the prompts file)."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise SlmError(f"--out {out}: write the records to a .jsonl file (what `slm finetune` reads)")
    check_not_input(out, reads)
    check_not_input(dropped_path(out), reads)
    if out.exists() and not out.is_file():
        raise SlmError(f"--out {out} exists and is not a file; choose another --out")
    check_writable(out)
    return out


def chat_record(prompt: str, answer: str, system: str | None, meta: dict) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "meta": meta}


@dataclass
class Existing:
    """What earlier runs left in one output file."""

    records: list[dict] = field(default_factory=list)
    partial_bytes: int = 0  # the length of a last line cut off mid-write (0: none)


def read_existing(path: Path) -> Existing:
    """The complete records of `path` (none if it is absent); any complete line that is not a record stops with
    its file:line before anything is changed."""
    if not path.exists():
        return Existing()
    data = path.read_bytes()
    complete, _, partial = data.rpartition(b"\n")
    existing = Existing(partial_bytes=len(partial))
    for lineno, line in enumerate(complete.decode("utf-8", "replace").split("\n") if complete else [], start=1):
        if line.strip():
            existing.records.append(_record_of(path, lineno, line))
    return existing


def _record_of(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not valid JSON ({json_problem(exc, with_line=False)}); "
                        "not a file slm synth wrote, choose another --out") from None
    meta = record.get("meta") if isinstance(record, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(key), int) for key in ("prompt_index", "sample")):
        raise DataError(f"{path}:{lineno}: no meta.prompt_index/meta.sample; not a file slm synth wrote, choose "
                        "another --out")
    record["_line"] = lineno  # for errors about it; never written back
    return record


def check_same_run(path: Path, record: dict, prompts: list[str], teacher: str, style: str) -> None:
    """A record of an earlier run must answer the same prompt, by the same teacher, in the same style."""
    where, meta = f"{path}:{record['_line']}", record["meta"]
    index = meta["prompt_index"]
    user = next((m.get("content") for m in record.get("messages", []) if m.get("role") == "user"), None)
    if not 0 <= index < len(prompts) or user != prompts[index]:
        raise DataError(f"{where}: answers a prompt that is not prompt {index + 1} of these prompts (another prompts "
                        "file, or reordered); choose another --out")
    if (meta.get("teacher"), meta.get("style")) != (teacher, style):
        raise DataError(f"{where}: written by teacher {meta.get('teacher')} in {meta.get('style')} style; this run "
                        f"is {teacher} in {style} style; choose another --out")


# Line breaks to Python's str.splitlines (which slmkit's JSONL readers split on) that json.dumps leaves raw
# with ensure_ascii=False; escaped, a record stays one line to every reader (inside a JSON string, the same text).
UNESCAPED_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def one_line(line: str) -> str:
    for char, escaped in UNESCAPED_BREAKS.items():
        line = line.replace(char, escaped)
    return line


class SynthOutput:
    """The kept and dropped files of a run, opened to append after what earlier runs wrote."""

    def __init__(self, out: Path, prompts: list[str], teacher: str, style: str):
        """Reads and checks both files (nothing is changed if one is refused), then cuts off a partial line."""
        self.paths = {"kept": out, "dropped": dropped_path(out)}
        existing = {name: read_existing(path) for name, path in self.paths.items()}
        for name, found in existing.items():
            for record in found.records:
                check_same_run(self.paths[name], record, prompts, teacher, style)
        self.done = {(r["meta"]["prompt_index"], r["meta"]["sample"]) for found in existing.values()
                     for r in found.records}
        self.kept_answers = [r["messages"][-1]["content"] for r in existing["kept"].records]
        self.dropped_before = Counter(r.get("dropped") for r in existing["dropped"].records)
        self.repaired = [str(self.paths[name]) for name, found in existing.items() if found.partial_bytes]
        for name, found in existing.items():
            if found.partial_bytes:
                with open(self.paths[name], "r+b") as handle:
                    handle.truncate(self.paths[name].stat().st_size - found.partial_bytes)
        self.handles: dict[str, object] = {}

    def write(self, record: dict, dropped: str | None = None) -> None:
        """Append one record (to the dropped file, with its reason, when `dropped`), on the disk when it returns."""
        name = "dropped" if dropped else "kept"
        if name not in self.handles:  # opened on first use: a run that drops nothing leaves no dropped file
            self.handles[name] = open(self.paths[name], "a", encoding="utf-8")
        handle = self.handles[name]
        line = json.dumps({**record, "dropped": dropped} if dropped else record, ensure_ascii=False)
        handle.write(one_line(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
