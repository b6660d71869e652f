"""Read the data files slmkit accepts, with errors that name the file and line.

.txt            plain text
.jsonl          one JSON object per line: `text`, `prompt`/`completion`, chat
                `messages`, seq2seq `input`/`target`, ARC (`question`, `choices`, `answerKey`), HellaSwag
                (`ctx`, `endings`, `label`), LAMBADA (`text`, last word is the target)
.tsv / .csv     `text` and `label` columns (a header row naming them, or exactly two columns)
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import DataError, json_problem

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = (".tsv", ".csv")
HEADER_NAMES = {"text", "sentence", "label"}  # a first row holding any of these is a header

# Schema name -> fields every record must have. Order matters: first match wins.
JSONL_SCHEMAS: dict[str, tuple[str, ...]] = {
    "arc": ("question", "choices", "answerKey"),
    "hellaswag": ("endings", "label"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "seq2seq": ("input", "target"),
    "text": ("text",),
}
# Schema name -> the fine-tuning task its records train (the others, ARC and HellaSwag, are evaluation files).
SCHEMA_TASKS = {"messages": "chat", "prompt_completion": "completion", "seq2seq": "seq2seq", "text": "text"}


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question as lm-evaluation-harness scores it."""

    context: str
    choices: tuple[str, ...]  # scored as context + " " + choice
    gold: int

    @property
    def continuations(self) -> tuple[str, ...]:
        return tuple(f" {choice}" for choice in self.choices)


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DataError(f"{path}: a symbolic link that leads nowhere (a loop, or its target is gone)")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


def _read(path: Path) -> str:
    """The file's text, without the byte-order mark spreadsheet programs and Notepad put first (it would
    otherwise be part of the first header name or JSON record, where no error message shows it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # decoded as utf-8, not utf-8-sig, so exc.start is the byte in the file
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return text.removeprefix("\ufeff")


def check_not_empty(path: str | Path) -> Path:
    """`path`, refused in one line when it holds nothing but whitespace (or is not UTF-8 text): what a
    command checks before it opens a model for the file."""
    path = _check_file(path)
    if not _read(path).strip():
        raise DataError(f"{path}: empty file")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Every non-blank line as a dict; the first bad line stops with its number."""
    path = _check_file(path)
    records = []
    for lineno, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({json_problem(exc, with_line=False)})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def jsonl_schema(path: str | Path, records: list[dict]) -> str:
    """The schema of the first record; every record must carry its fields."""
    first = records[0]
    schema = next((name for name, fields in JSONL_SCHEMAS.items() if all(f in first for f in fields)), None)
    if schema is None:
        known = "; ".join(f"{name}: {', '.join(fields)}" for name, fields in JSONL_SCHEMAS.items())
        raise DataError(f"{path}:1: unknown record schema (keys: {', '.join(first) or 'none'}); expected {known}")
    for index, record in enumerate(records, start=1):
        missing = [f for f in JSONL_SCHEMAS[schema] if f not in record]
        if missing:
            raise DataError(f"{path}: record {index}: missing field {missing[0]!r} ({schema} schema)")
    return schema


def load_text(path: str | Path) -> str:
    """All the text in a file, for perplexity and calibration."""
    path = _check_file(path)
    if path.suffix in JSONL_SUFFIXES:
        records = read_jsonl(path)
        schema = jsonl_schema(path, records)
        if schema == "text":
            pieces = [str(r["text"]) for r in records]
        elif schema == "prompt_completion":
            pieces = [f"{r['prompt']}{r['completion']}" for r in records]
        elif schema == "seq2seq":
            pieces = [f"{r['input']}\n{r['target']}" for r in records]
        elif schema == "messages":
            pieces = ["\n".join(str(m.get("content", "")) for m in r["messages"]) for r in records]
        else:
            raise DataError(f"{path}: {schema} records are not plain text; use --task choice")
        return "\n\n".join(pieces)
    if path.suffix in TABLE_SUFFIXES:
        return "\n".join(text for text, _ in load_labeled(path))
    text = _read(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return text


def _hellaswag_clean(text: str) -> str:
    # As lm-evaluation-harness's hellaswag preprocess: WikiHow artefacts out.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _arc_item(path: Path, index: int, record: dict) -> ChoiceItem:
    choices = record["choices"]
    if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
        raise DataError(f"{path}: record {index}: 'choices' must have 'text' and 'label' lists")
    labels = [str(label) for label in choices["label"]]
    if str(record["answerKey"]) not in labels:
        raise DataError(f"{path}: record {index}: answerKey {record['answerKey']!r} is not one of {labels}")
    return ChoiceItem(
        context=f"Question: {record['question']}\nAnswer:",
        choices=tuple(str(text) for text in choices["text"]),
        gold=labels.index(str(record["answerKey"])),
    )


def _hellaswag_item(path: Path, index: int, record: dict) -> ChoiceItem:
    if "ctx" in record:
        ctx = record["ctx"]
    elif "ctx_a" in record:
        ctx = f"{record['ctx_a']} {str(record.get('ctx_b', '')).capitalize()}"
    else:
        raise DataError(f"{path}: record {index}: missing field 'ctx' (hellaswag schema)")
    activity = record.get("activity_label")
    query = _hellaswag_clean(f"{activity}: {ctx}" if activity else ctx)
    endings = record["endings"]
    try:
        gold = int(record["label"])
    except (TypeError, ValueError):
        raise DataError(f"{path}: record {index}: label {record['label']!r} is not an integer") from None
    if not 0 <= gold < len(endings):
        raise DataError(f"{path}: record {index}: label {gold} is out of range for {len(endings)} endings")
    return ChoiceItem(query, tuple(_hellaswag_clean(str(e)) for e in endings), gold)


def load_choice(path: str | Path) -> list[ChoiceItem]:
    """Multiple-choice items from ARC- or HellaSwag-schema JSONL."""
    path = _check_file(path)
    records = read_jsonl(path)
    schema = jsonl_schema(path, records)
    build = {"arc": _arc_item, "hellaswag": _hellaswag_item}.get(schema)
    if build is None:
        raise DataError(f"{path}: {schema} records are not multiple choice; expected the ARC or HellaSwag schema")
    return [build(path, index, record) for index, record in enumerate(records, start=1)]


def load_lambada(path: str | Path) -> list[tuple[str, str]]:
    """(context, " last word") pairs from LAMBADA-style `text` records."""
    path = _check_file(path)
    records = read_jsonl(path)
    if jsonl_schema(path, records) != "text":
        raise DataError(f"{path}: expected LAMBADA records with a 'text' field")
    pairs = []
    for index, record in enumerate(records, start=1):
        text = str(record["text"]).strip()
        if " " not in text:
            raise DataError(f"{path}: record {index}: needs at least two words")
        context, word = text.rsplit(" ", 1)
        pairs.append((context, f" {word}"))
    return pairs


def load_labeled(path: str | Path) -> list[tuple[str, str]]:
    """(text, label) rows from a TSV/CSV with a `text`/`label` header or exactly two columns."""
    path = _check_file(path)
    rows = _table_rows(path)
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [cell.strip().lower() for cell in rows[0][1]]
    if "label" in header and ("text" in header or "sentence" in header):
        text_col = header.index("text") if "text" in header else header.index("sentence")
        label_col, width = header.index("label"), len(header)
        rows = rows[1:]
    elif set(header) & HEADER_NAMES:  # a header, but not one naming both columns
        raise DataError(f"{path}:1: header {', '.join(rows[0][1])}: expected columns named text (or sentence) "
                        "and label")
    else:
        text_col, label_col, width = 0, 1, 2
    examples = []
    for lineno, row in rows:
        if len(row) != width:
            raise DataError(f"{path}:{lineno}: expected {width} columns (text, label), found {len(row)}")
        examples.append((row[text_col].strip(), row[label_col].strip()))
    if not examples:
        raise DataError(f"{path}: no rows after the header")
    return examples


def _table_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank row. The csv module reads the text whole, not split into
    lines first, so a quoted CSV cell keeps its newlines and delimiters; TSV cells are taken as written
    (quotes are text there)."""
    quoting = csv.QUOTE_NONE if path.suffix == ".tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(_read(path), newline=""), delimiter="\t" if path.suffix == ".tsv" else ",",
                        quoting=quoting, strict=True)
    rows, start = [], 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: {exc} (a quote that is never closed?)") from None
    return rows


def infer_task(path: str | Path, *, training: bool = False) -> str:
    """The task a file holds, from its suffix and JSONL schema: perplexity | choice | lambada | classification
    for `slm eval`; with `training`, chat | completion | text | classification | seq2seq for fine-tuning.

    They differ on purpose: evaluation scores any other text as perplexity, while training refuses a file
    whose task it cannot tell or cannot train on (multiple choice), naming the fix.
    """
    path = _check_file(path)
    if path.suffix in TABLE_SUFFIXES:
        load_labeled(path)  # a bad header or row is named before a model is opened for it
        return "classification"
    if path.suffix not in JSONL_SUFFIXES:
        if not training:
            return "perplexity"
        if path.suffix in TEXT_SUFFIXES:
            return "text"
        raise DataError(f"{path}: cannot tell the task from the suffix {path.suffix or '(none)'}; pass --task")
    schema = jsonl_schema(path, read_jsonl(path))
    if not training:
        if schema in ("arc", "hellaswag"):
            return "choice"
        return "lambada" if schema == "text" and "lambada" in path.name.lower() else "perplexity"
    if schema not in SCHEMA_TASKS:
        raise DataError(f"{path}: {schema} records make an evaluation file (multiple choice), not training data; "
                        "score it with `slm eval`")
    return SCHEMA_TASKS[schema]
