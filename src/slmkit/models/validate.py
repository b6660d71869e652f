"""Check a model's files before any runtime opens them: a bad file is one line naming what is wrong.

A model file is untrusted input (downloaded from anywhere, or handed over by a program): the checks
here read only headers and sizes, so they run before a loader that could crash, hang or load half a model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from slmkit.errors import ModelLoadError, first_line

SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors library refuses headers over 100 MB too


def check_safetensors(path: Path) -> dict:
    """The header: an 8-byte little-endian length, then that much JSON naming each tensor's dtype, shape and byte
    range; every range must lie inside the file (a truncated download fails here), then the safetensors library
    checks the rest (each range the size its shape and dtype take). Returns the parsed header."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(SAFETENSORS_HEADER_LIMIT, size - 8):
            raise ModelLoadError(f"{path}: corrupt safetensors header (it says {length} bytes; the file has "
                                 f"{size - 8} after the length)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: corrupt safetensors header (not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: corrupt safetensors header (not a JSON object)")
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ModelLoadError(f"{path}: corrupt safetensors header (tensor {name!r} has no valid data_offsets)")
        if offsets[1] > data:
            raise ModelLoadError(f"{path}: truncated safetensors file (tensor {name!r} ends at byte "
                                 f"{offsets[1]} of {data})")
    from safetensors import safe_open

    try:
        with safe_open(path, "pt"):  # reads the header only; the data stays mapped, unread
            pass
    except Exception as exc:  # SafetensorError, with the library's reason
        raise ModelLoadError(f"{path}: corrupt safetensors header ({first_line(exc)})") from None
    return header


MAX_BLOCKS = 512  # llama.cpp's LLAMA_MAX_LAYERS: more aborts the process inside ggml
SPECIAL_TOKENS = ("bos", "eos", "unknown", "padding", "separator", "eot", "eom")  # tokenizer.ggml.<name>_token_id
INTEGER_TYPES = ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64")


def check_gguf_magic(path: Path) -> None:
    """Missing files and files that are not GGUF at all get one line."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")


def check_gguf(path: Path):
    """The file's GGUFReader: magic, version, counts and lengths inside the file, known tensor types (gguf's
    reader checks those); non-GGUF, truncated, corrupt or missing files get one line instead."""
    check_gguf_magic(path)
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, IndexError, KeyError... for what it cannot parse
        raise ModelLoadError(f"{path}: truncated or corrupt GGUF file ({first_line(exc)})") from None


def validate_gguf(path: Path):
    """`check_gguf`, then what a runtime would trip over: the architecture and its hyperparameters within
    llama.cpp's limits, every tensor where the header says and contiguous as llama.cpp expects, the tensors
    every block needs with the shapes the hyperparameters imply, special tokens inside the vocabulary, BPE
    merges well formed, a chat template that compiles. Returns the reader; each failure is one line naming the
    file, the field and the value. Written here because neither gguf nor llama-cpp-python checks these (ggml
    aborts the process, transformers loads half a model)."""
    reader = check_gguf(path)
    fields = GGUFFields(path, reader)
    import gguf

    architecture = fields.string("general.architecture")
    if architecture not in gguf.MODEL_ARCH_NAMES.values():
        raise ModelLoadError(f"{path}: general.architecture {architecture!r} is not one llama.cpp knows")
    blocks = fields.integer(f"{architecture}.block_count", low=1)
    if blocks > MAX_BLOCKS:
        raise ModelLoadError(f"{path}: {architecture}.block_count is {blocks}; llama.cpp runs at most {MAX_BLOCKS}")
    width = fields.integer(f"{architecture}.embedding_length", low=1)
    fields.integer(f"{architecture}.context_length", low=1)
    heads = fields.integer(f"{architecture}.attention.head_count", low=1)
    kv_heads = fields.integer(f"{architecture}.attention.head_count_kv", low=1, required=False)
    if kv_heads is not None and heads % kv_heads:
        raise ModelLoadError(f"{path}: {architecture}.attention.head_count_kv {kv_heads} does not divide "
                             f"head_count {heads}")
    if fields.integer(f"{architecture}.attention.key_length", low=1, required=False) is None and width % heads:
        raise ModelLoadError(f"{path}: {architecture}.attention.head_count {heads} does not divide "
                             f"embedding_length {width}")
    file_type = fields.integer("general.file_type", low=0, required=False)
    if file_type is not None and file_type not in {member.value for member in gguf.LlamaFileType}:
        raise ModelLoadError(f"{path}: general.file_type {file_type} is not a GGUF file type")
    vocabulary = _check_tokenizer(path, fields)
    _check_tensor_layout(path, reader)
    _check_tensors(path, reader, blocks, width, vocabulary)
    return reader


class GGUFFields:
    """Typed reads of a GGUF's metadata, each refusal naming the key."""

    def __init__(self, path: Path, reader):
        self.path, self.fields = path, reader.fields

    def _field(self, key: str, required: bool):
        field = self.fields.get(key)
        if field is None and required:
            raise ModelLoadError(f"{self.path}: {key} is missing")
        return field

    def string(self, key: str, required: bool = True) -> str | None:
        field = self._field(key, required)
        if field is None:
            return None
        if field.types != [_value_type("STRING")]:
            raise ModelLoadError(f"{self.path}: {key} should be a string, is {field.types[0].name}")
        try:
            text = field.contents()
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.path}: {key} is not UTF-8 text") from None
        if "\0" in text:  # llama.cpp reads it as a C string: it would end there
            raise ModelLoadError(f"{self.path}: {key} holds a NUL byte")
        return text

    def integer(self, key: str, low: int, required: bool = True) -> int | None:
        """A number, or the largest of a per-layer array of them (llama.cpp takes either for head counts)."""
        field = self._field(key, required)
        if field is None:
            return None
        kinds = [kind.name for kind in field.types]
        if kinds[-1] not in INTEGER_TYPES or kinds[:-1] not in ([], ["ARRAY"]):
            raise ModelLoadError(f"{self.path}: {key} should be an integer, is {'/'.join(kinds)}")
        values = field.contents()
        values = values if isinstance(values, list) else [values]
        if not values or min(values) < low:
            raise ModelLoadError(f"{self.path}: {key} is {values[0] if len(values) == 1 else values}; it must be "
                                 f"at least {low}")
        return max(int(value) for value in values)

    def strings(self, key: str) -> list[str] | None:
        field = self.fields.get(key)
        if field is None:
            return None
        if [kind.name for kind in field.types] != ["ARRAY", "STRING"]:
            raise ModelLoadError(f"{self.path}: {key} should be an array of strings")
        try:
            return field.contents()
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.path}: {key} holds text that is not UTF-8") from None


def _value_type(name: str):
    from gguf import GGUFValueType

    return GGUFValueType[name]


def _check_tokenizer(path: Path, fields: GGUFFields) -> int:
    """The vocabulary's size, once the token ids, merges and chat template that use it check out."""
    tokens = fields.strings("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError(f"{path}: tokenizer.ggml.tokens is missing or empty; a GGUF carries its vocabulary")
    for name in SPECIAL_TOKENS:
        key = f"tokenizer.ggml.{name}_token_id"
        token = fields.integer(key, low=0, required=False)
        if token is not None and token >= len(tokens):
            raise ModelLoadError(f"{path}: {key} is {token}, past the vocabulary of {len(tokens)} tokens")
    seen: dict[str, int] = {}
    for index, token in enumerate(tokens):  # llama.cpp maps text to ids both ways and aborts on a collision
        if "\0" in token:  # C strings end there, so the token collides with a shorter one
            raise ModelLoadError(f"{path}: tokenizer.ggml.tokens[{index}] {token!r} holds a NUL byte")
        if seen.setdefault(token, index) != index:
            raise ModelLoadError(f"{path}: tokenizer.ggml.tokens[{index}] {token!r} is token {seen[token]} too")
    for index, merge in enumerate(fields.strings("tokenizer.ggml.merges") or []):
        left, space, right = merge.partition(" ")
        if not (left and space and right) or " " in right:
            raise ModelLoadError(f"{path}: tokenizer.ggml.merges[{index}] is {merge!r}; a merge is two tokens "
                                 "with one space between them")
        unknown = next((part for part in (left, right) if part not in seen), None)
        if unknown is not None:
            raise ModelLoadError(f"{path}: tokenizer.ggml.merges[{index}] {merge!r} merges {unknown!r}, which is not "
                                 "in the vocabulary")
    template = fields.string("tokenizer.chat_template", required=False)
    if template is not None:
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        try:
            ImmutableSandboxedEnvironment().parse(template)
        except TemplateSyntaxError as exc:
            raise ModelLoadError(f"{path}: tokenizer.chat_template does not compile ({exc.message}, template line "
                                 f"{exc.lineno})") from None
    return len(tokens)


def _check_tensor_layout(path: Path, reader) -> None:
    """llama.cpp expects the tensors' data one after another in header order, each start aligned."""
    if not reader.tensors:
        raise ModelLoadError(f"{path}: holds no tensors")
    expected = 0
    for tensor in reader.tensors:
        offset = int(tensor.data_offset) - int(reader.data_offset)
        if offset != expected:
            raise ModelLoadError(f"{path}: tensor {tensor.name} starts at data offset {offset}, where {expected} "
                                 f"was expected (its own or an earlier tensor's type or size was changed)")
        expected = -(-(offset + int(tensor.n_bytes)) // reader.alignment) * reader.alignment
    end = int(reader.tensors[-1].data_offset) + int(reader.tensors[-1].n_bytes)
    if end > path.stat().st_size:
        raise ModelLoadError(f"{path}: truncated GGUF file (tensor data ends at byte {end} of {path.stat().st_size})")


def _check_tensors(path: Path, reader, blocks: int, width: int, vocabulary: int) -> None:
    """The token embedding and every block present, with the widths the header gives; no block past them."""
    shapes = {tensor.name: [int(n) for n in tensor.shape] for tensor in reader.tensors}
    embedding = shapes.get("token_embd.weight")
    if embedding is None:
        raise ModelLoadError(f"{path}: tensor token_embd.weight is missing")
    if embedding != [width, vocabulary]:
        raise ModelLoadError(f"{path}: token_embd.weight is {embedding}; the header says [{width}, {vocabulary}] "
                             "(embedding_length, vocabulary)")
    per_block: dict[int, list[str]] = {}
    for name in shapes:
        if name.startswith("blk."):
            index = name.split(".")[1]
            if not index.isdigit() or int(index) >= blocks:
                raise ModelLoadError(f"{path}: tensor {name} is past block_count {blocks}")
            per_block.setdefault(int(index), []).append(name)
    missing = [index for index in range(blocks) if index not in per_block]
    if missing:
        raise ModelLoadError(f"{path}: block {missing[0]} has no tensors (block_count is {blocks})")
    for index in range(blocks):
        for name in (f"blk.{index}.attn_output.weight", f"blk.{index}.ffn_down.weight"):
            if name in shapes and shapes[name][-1] != width:  # both write back into the residual stream
                raise ModelLoadError(f"{path}: {name} is {shapes[name]}; its output should be embedding_length "
                                     f"{width}")
