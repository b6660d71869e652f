"""Training examples for `slm finetune`: token ids with loss labels per task (data.tasks names each task's
builder and collator here), packing, and batch collators.

chat            `messages` JSONL; the loss covers the assistant turns only, their end-of-turn markers included
completion      `prompt`/`completion` JSONL; the loss covers the completion and eos only
text            .txt/.md (documents separated by blank lines) or `text` JSONL; the loss covers every token
classification  .tsv/.csv `text`/`label` rows; a class id per row
seq2seq         `input`/`target` JSONL; encoder input ids, the target's ids as labels

A chat message, prompt or completion is data, not markup: a special token's text in it is encoded as text
(data.chat), as the served model will read it.

Example: `data = training_data("chat", "chats.jsonl", tokenizer, max_length=1024)`, then
`Trainer(train_dataset=pack(data.examples, 1024), data_collator=collator("chat", tokenizer, packing=True))`.

From TRL: its language-modelling collator (padding-free rows with per-document position ids) and its best-fit
packing, as they are. Not its SFTTrainer: it trains causal LMs only (no classification or seq2seq heads), its
assistant-only loss needs templates with `{% generation %}` markers (SmolLM2's has none; the masks here come
from the rendered offsets), and slmkit's own Trainer subclass (train/base.py) already holds the checkpoints,
signals and NaN guard every slmkit trainer shares.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from slmkit.data.chat import chat_ids, literal_tokenizer
from slmkit.data.loaders import (JSONL_SCHEMAS, JSONL_SUFFIXES, SCHEMA_TASKS, _check_file, _read, jsonl_schema,
                                 load_labeled, read_jsonl)
from slmkit.data.tasks import TASKS, Task
from slmkit.errors import DataError, first_line

CHAT_ROLES = ("system", "user", "assistant")
IGNORE = -100  # the label transformers' loss skips: no loss on this token


@dataclass(frozen=True)
class TrainingData:
    """A training file as examples ready for `collator(task, ...)` or a `datasets.Dataset`."""

    task: str
    examples: list[dict]
    label_names: tuple[str, ...] | None  # classification only: index = class id
    records: int  # records (documents, rows) read from the file
    tokens: int  # input_ids lengths summed over the examples


def training_data(task: str, path: str | Path, tokenizer, *, max_length: int,
                  label_names: tuple[str, ...] | None = None) -> TrainingData:
    """The examples of `path` for `task`, each at most `max_length` tokens.

    label_names (classification): the training file's labels, given when building evaluation data so the
    class ids agree; None: the file's own labels, sorted so the id mapping is reproducible.
    """
    spec = _task(task)
    _check_max_length(max_length)
    path = _check_file(path)
    names = None
    if spec.classes:
        names = tuple(label_names) if label_names is not None else _label_names_of(path, load_labeled(path))
    # Every builder takes the label names; a `classes` task's alone reads them.
    examples, records = _function(spec.examples)(path, tokenizer, max_length, names)
    return TrainingData(task, examples, names, records, _token_count(examples))


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """LM examples packed best-fit-decreasing into rows of at most `max_length` tokens; each row's
    `seq_lengths` lets `collator(..., packing=True)` restart positions (and attention) per document."""
    import datasets
    from trl.data_utils import pack_dataset

    _check_max_length(max_length)
    datasets.disable_progress_bars()  # its "Map" bar would interrupt the caller's own progress display
    return pack_dataset(datasets.Dataset.from_list(examples), max_length, strategy="bfd").to_list()


def collator(task: str, tokenizer, *, packing: bool = False):
    """The batch collator for `task`'s examples. packing: padding-free batches (one flat row with per-document
    position_ids, no attention_mask) for LM examples, packed by `pack` or not."""
    return _function(_task(task).collator)(tokenizer, packing)


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the pad token, else eos (a model's config.pad_token_id must agree)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("the tokenizer has neither a pad token nor an eos token to pad batches with")
    return pad


def load_conversations(path: str | Path) -> list[list[dict]]:
    """The `messages` of each record of a chat JSONL file, checked: roles system/user/assistant, string
    contents, at least one assistant turn."""
    path = _check_file(path)
    records = _jsonl_records(path, "chat")
    return [_checked_conversation(path, n, record["messages"]) for n, record in enumerate(records, start=1)]


# --- chat ---------------------------------------------------------------------------------------------------

def _checked_conversation(path: Path, n: int, messages) -> list[dict]:
    where = f"{path}: record {n}"
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of messages")
    for k, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise DataError(f"{where}: message {k} is not an object")
        if message.get("role") not in CHAT_ROLES:
            raise DataError(f"{where}: message {k}: unknown role {message.get('role')!r}; "
                            f"expected {', '.join(CHAT_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {k}: 'content' must be a string")
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{where}: no assistant turn")
    return messages


def chat_examples(path: Path, tokenizer, max_length: int, label_names=None) -> tuple[list[dict], int]:
    if tokenizer.chat_template is None:
        raise DataError("the model has no chat template, so chat records cannot be rendered; "
                        "train on prompt/completion records with --task completion")
    conversations = load_conversations(path)
    rendered = [_assistant_spans(path, n, tokenizer, messages)
                for n, messages in enumerate(conversations, start=1)]
    # The template writes the special tokens (BOS, turn markers) itself, so none are added.
    encodings = tokenizer([text for text, _ in rendered], return_offsets_mapping=True, add_special_tokens=False)
    examples = []
    for n, (messages, (_, spans), input_ids, offsets) in enumerate(
            zip(conversations, rendered, encodings["input_ids"], encodings["offset_mapping"]), start=1):
        if chat_ids(tokenizer, messages, add_generation_prompt=False) == input_ids:
            labels = [token if _inside(offset, spans) else IGNORE for token, offset in zip(input_ids, offsets)]
        else:  # the rendered text's encoding made a token of a special token's text in a message
            input_ids, labels = _literal_example(path, n, tokenizer, messages)
        examples.append(_truncated(path, n, input_ids, labels, max_length))
    return examples, len(conversations)


def _assistant_spans(path: Path, n: int, tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it: from the end of the
    generation prompt before the turn to the end of the turn as rendered, so the end-of-turn marker the
    template writes is learnt too (the model must learn to stop). Character offsets, not `{% generation %}`
    markers, because most templates (SmolLM2's among them) have none."""
    text = _render(path, n, tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise DataError(f"{path}: record {n}: the conversation opens with an assistant turn; "
                            "start it with a system or user message")
        before = _render(path, n, tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(path, n, tokenizer, messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise _unstable(path, n, i)
        spans.append((len(before), len(through)))
    return text, spans


def _literal_example(path: Path, n: int, tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Ids and labels of a conversation whose messages hold a special token's text, kept as text by `chat_ids`.
    Its encoding has no character offsets, so each assistant turn is found by token counts instead: from the
    encoded generation prompt before the turn to the encoded turn (the same spans as `_assistant_spans`)."""
    input_ids = chat_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = chat_ids(tokenizer, messages[:i], add_generation_prompt=True)
        through = chat_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (through[:len(before)] == before and input_ids[:len(through)] == through):
            raise _unstable(path, n, i)
        labels[len(before):len(through)] = through[len(before):]
    return input_ids, labels


def _unstable(path: Path, n: int, i: int) -> DataError:
    return DataError(f"{path}: record {n}: the chat template is not prefix-stable at message {i + 1} (the "
                     "generation prompt, that turn and the whole conversation must each start the next), so the "
                     "assistant's tokens cannot be found; use --task completion instead")


def _render(path: Path, n: int, tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    """The conversation as text, by transformers' sandboxed Jinja rendering of the model's template."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        raise DataError(f"{path}: record {n}: the model's chat template failed: {first_line(exc)}") from None


def _inside(offset: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    start, end = offset
    return any(span_start <= start and end <= span_end for span_start, span_end in spans)


# --- completion and text ------------------------------------------------------------------------------------

def completion_examples(path: Path, tokenizer, max_length: int, label_names=None) -> tuple[list[dict], int]:
    records = _jsonl_records(path, "completion")
    prompts = [_string(path, n, record, "prompt") for n, record in enumerate(records, start=1)]
    completions = [_string(path, n, record, "completion") for n, record in enumerate(records, start=1)]
    # Tokenized apart and joined, so the prompt/completion boundary is exact; the prompt takes the
    # tokenizer's special tokens (BOS), the completion ends in eos so the model learns to stop.
    literal = literal_tokenizer(tokenizer)
    prompt_ids = literal(prompts)["input_ids"]
    completion_ids = literal(completions, add_special_tokens=False)["input_ids"]
    examples = []
    for n, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids), start=1):
        target = completion + _eos(tokenizer)
        examples.append(_truncated(path, n, prompt + target, [IGNORE] * len(prompt) + target, max_length))
    return examples, len(records)


def text_examples(path: Path, tokenizer, max_length: int, label_names=None) -> tuple[list[dict], int]:
    documents = _documents(path)
    # verbose=False: a document longer than the model's context is expected here, it is cut into chunks below.
    token_ids = tokenizer(documents, verbose=False)["input_ids"]
    examples = [{"input_ids": chunk, "labels": chunk}
                for ids in token_ids for chunk in _chunks(ids + _eos(tokenizer), max_length)]
    if not examples:
        raise DataError(f"{path}: no text to train on")
    return examples, len(documents)


def _documents(path: Path) -> list[str]:
    if path.suffix in JSONL_SUFFIXES:
        records = _jsonl_records(path, "text")
        return [_string(path, n, record, "text") for n, record in enumerate(records, start=1)]
    documents = [document.strip() for document in re.split(r"\n\s*\n", _read(path))]
    documents = [document for document in documents if document]
    if not documents:  # the tokenizer would fail on an empty batch with an IndexError
        raise DataError(f"{path}: empty file")
    return documents


def _chunks(ids: list[int], max_length: int) -> list[list[int]]:
    chunks = [ids[start:start + max_length] for start in range(0, len(ids), max_length)]
    return [chunk for chunk in chunks if len(chunk) > 1]  # a lone token has nothing to predict


def _truncated(path: Path, n: int, input_ids: list[int], labels: list[int], max_length: int) -> dict:
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    # labels[0] never counts: the loss predicts token t+1 from the tokens up to t.
    if all(label == IGNORE for label in labels[1:]):
        raise DataError(f"{path}: record {n}: no trainable token within --max-length {max_length}")
    return {"input_ids": input_ids, "labels": labels}


# --- classification and seq2seq -----------------------------------------------------------------------------

def classification_examples(path: Path, tokenizer, max_length: int, label_names: tuple[str, ...]
                            ) -> tuple[list[dict], int]:
    rows = load_labeled(path)
    class_ids = {name: index for index, name in enumerate(label_names)}
    for n, (_, label) in enumerate(rows, start=1):
        if label not in class_ids:
            raise DataError(f"{path}: row {n}: label {label!r} is not one of the training labels "
                            f"({', '.join(label_names)})")
    encodings = tokenizer([text for text, _ in rows], truncation=True, max_length=max_length)
    examples = [{**example, "labels": class_ids[label]} for example, (_, label) in zip(_rows(encodings), rows)]
    return examples, len(rows)


def label_names(path: str | Path) -> tuple[str, ...]:
    """A classification file's class names, sorted (so class ids are reproducible); at least two."""
    path = _check_file(path)
    return _label_names_of(path, load_labeled(path))


def _label_names_of(path: Path, rows: list[tuple[str, str]]) -> tuple[str, ...]:
    names = tuple(sorted({label for _, label in rows}))
    if len(names) < 2:
        raise DataError(f"{path}: classification needs at least 2 distinct labels, found {len(names)} "
                        f"({', '.join(map(repr, names))})")
    return names


def seq2seq_examples(path: Path, tokenizer, max_length: int, label_names=None) -> tuple[list[dict], int]:
    records = _jsonl_records(path, "seq2seq")
    inputs = [_string(path, n, record, "input") for n, record in enumerate(records, start=1)]
    targets = [_string(path, n, record, "target") for n, record in enumerate(records, start=1)]
    # text_target: the tokenizer's target-side processing (T5's </s>) applies to the labels.
    examples = _rows(tokenizer(inputs, text_target=targets, truncation=True, max_length=max_length))
    eos = _eos(tokenizer)
    for n, example in enumerate(examples, start=1):
        if not example["labels"]:
            raise DataError(f"{path}: record {n}: the target has no tokens to train on")
        if eos and example["labels"][-1:] != eos:  # T5's tokenizer ends targets with </s>; one that does not
            example["labels"] = example["labels"][:max_length - 1] + eos  # still has to learn to stop
    return examples, len(records)


# --- collators: each takes (tokenizer, packing) -------------------------------------------------------------
# Each imports its class when called: trl is slow to import, and distill.losses reads this module for IGNORE.

def lm_collator(tokenizer, packing: bool):
    """Causal-LM batches; packing: padding-free (one flat row with per-document position_ids)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batches = DataCollatorForLanguageModeling(pad_token_id=pad_token_id(tokenizer), padding_free=packing)
    return _CachelessBatches(batches) if packing else batches


def padding_collator(tokenizer, packing: bool):
    """Classification batches, padded (a row per example: nothing to pack)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer=_padding_tokenizer(tokenizer))


def seq2seq_collator(tokenizer, packing: bool):
    """Encoder inputs and target labels, each padded (a row per example: nothing to pack)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer=_padding_tokenizer(tokenizer), label_pad_token_id=IGNORE)


# --- shared -------------------------------------------------------------------------------------------------

def _task(name: str) -> Task:
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def _function(name: str) -> Callable:
    """This module's function a Task names (data.tasks names them: the CLI reads it without importing this)."""
    return globals()[name]


def _check_max_length(max_length: int) -> None:
    if max_length <= 0:
        raise DataError(f"--max-length must be a positive number of tokens, got {max_length}")


def _jsonl_records(path: Path, task: str) -> list[dict]:
    """The records of a JSONL file, which must be in the schema `task` trains on."""
    wanted = TASKS[task].schema
    if path.suffix not in JSONL_SUFFIXES:
        raise DataError(f"{path}: --task {task} reads JSONL records with {', '.join(JSONL_SCHEMAS[wanted])}; "
                        f"this is not a {'/'.join(JSONL_SUFFIXES)} file")
    records = read_jsonl(path)
    schema = jsonl_schema(path, records)
    if schema != wanted:
        hint = f" (try --task {SCHEMA_TASKS[schema]})" if schema in SCHEMA_TASKS else ""
        raise DataError(f"{path}: --task {task} needs records with {', '.join(JSONL_SCHEMAS[wanted])}; "
                        f"these are {schema} records{hint}")
    return records


def _string(path: Path, n: int, record: dict, field: str) -> str:
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{path}: record {n}: {field!r} must be a string, got {type(value).__name__}")
    return value


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _rows(encodings) -> list[dict]:
    """A batched tokenizer output (column -> one list per text) as one dict per text."""
    return [dict(zip(encodings.keys(), values)) for values in zip(*encodings.values())]


def _token_count(examples: list[dict]) -> int:
    return sum(len(example["input_ids"]) for example in examples)


def _padding_tokenizer(tokenizer):
    """The tokenizer, or a copy of it that pads with eos when it has no pad token: the caller's tokenizer
    (and the checkpoint saved from it) stays as it was, and no token is added to the vocabulary."""
    if tokenizer.pad_token is not None:
        return tokenizer
    pad_token_id(tokenizer)  # neither pad nor eos: say so now, not at the first batch
    padding = copy.deepcopy(tokenizer)
    padding.pad_token = tokenizer.eos_token
    return padding


@dataclass(frozen=True)
class _CachelessBatches:
    """Padding-free batches that also say use_cache=False: transformers (masking_utils) finds the documents of
    a packed row from its position_ids only when no KV cache is built; a model whose config keeps
    use_cache=True would otherwise let every token attend across document boundaries."""

    collate: Callable[[list[dict]], dict]

    def __call__(self, examples: list[dict]) -> dict:
        return {**self.collate(examples), "use_cache": False}
