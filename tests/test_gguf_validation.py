"""A GGUF is checked before any runtime opens it: each broken file is one line naming the field and the value,
on llama.cpp and on torch alike (the cases a probe found crashing, hanging or half-loading)."""

import shutil

import numpy as np
import pytest
from gguf import GGUFReader

import slmkit
from slmkit.errors import ModelLoadError
from slmkit.runtime import open_model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_llama_dir):
    path = tmp_path_factory.mktemp("gguf") / "tiny.f32.gguf"
    slmkit.export(slmkit.load(str(tiny_llama_dir)), path, slmkit.GGUFConfig(quant="f32"))
    return path


def value(reader, key):
    field = reader.fields[key]
    return field.parts[field.data[0]]


def set_number(key, number):
    def change(reader):
        value(reader, key)[0] = number
    return change


def rename_key(key):
    def change(reader):
        reader.fields[key].parts[1][-1] = ord("X")  # parts: key length, key bytes, value type, value
    return change


def replace_bytes(key, old: bytes, new: bytes):
    def change(reader):
        raw = value(reader, key)
        start = bytes(raw).index(old)
        raw[start:start + len(new)] = np.frombuffer(new, dtype=np.uint8)
    return change


def tensor_part(name, part, edit):
    def change(reader):  # a tensor info's parts: name length, name, dims count, dims, type, data offset
        tensor = next(t for t in reader.tensors if t.name == name)
        edit(tensor.field.parts[part])
    return change


def non_utf8(key):
    def change(reader):
        value(reader, key)[:] = 0xFF
    return change


CASES = {
    "block_count above llama.cpp's limit": (set_number("llama.block_count", 1000),
                                           "llama.block_count is 1000; llama.cpp runs at most 512"),
    "no general.architecture": (rename_key("general.architecture"), "general.architecture is missing"),
    "architecture not UTF-8": (non_utf8("general.architecture"), "general.architecture is not UTF-8 text"),
    "unknown file type": (set_number("general.file_type", 999), "general.file_type 999 is not a GGUF file type"),
    "special token past the vocabulary": (set_number("tokenizer.ggml.eos_token_id", 99999),
                                          "tokenizer.ggml.eos_token_id is 99999, past the vocabulary of 300"),
    "malformed BPE merge": (lambda reader: np.place(value(reader, "tokenizer.ggml.merges"),
                                                    value(reader, "tokenizer.ggml.merges") == 32, ord("x")),
                            r"tokenizer.ggml.merges\[0\] is '.+'; a merge is two tokens with one space"),
    "chat template syntax error": (replace_bytes("tokenizer.chat_template", b"endfor", b"endfox"),
                                   "tokenizer.chat_template does not compile"),
    "no tensors": (set_number("GGUF.tensor_count", 0), "holds no tensors|truncated or corrupt GGUF file"),
    "renamed token embedding": (tensor_part("token_embd.weight", 1, lambda name: name.__setitem__(-1, ord("X"))),
                                "tensor token_embd.weight is missing"),
    "a tensor's type changed": (tensor_part("token_embd.weight", 4, lambda kind: kind.__setitem__(0, 1)),
                                "tensor blk.0.attn_q.weight starts at data offset .+ was expected"),
    "misaligned data offset": (tensor_part("blk.0.attn_k.weight", 5, lambda offset: offset.__setitem__(0, offset[0] + 1)),
                               "tensor blk.0.attn_k.weight starts at data offset"),
    "kv heads not dividing heads": (set_number("llama.attention.head_count_kv", 3),
                                    "llama.attention.head_count_kv 3 does not divide head_count 4"),
    "no heads": (set_number("llama.attention.head_count", 0), "llama.attention.head_count is 0; it must be at least 1"),
    "a block past block_count": (set_number("llama.block_count", 1), "tensor blk.1.attn_q.weight is past block_count 1"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_broken_gguf_is_one_line_on_both_runtimes(case, tiny_gguf, tmp_path):
    pytest.importorskip("llama_cpp")
    change, message = CASES[case]
    broken = tmp_path / "broken.gguf"
    shutil.copy(tiny_gguf, broken)
    reader = GGUFReader(broken, "r+")
    change(reader)
    reader.data.flush()
    del reader
    for opening in (lambda: open_model(str(broken)), lambda: slmkit.load(str(broken))):  # llama.cpp, torch
        with pytest.raises(ModelLoadError, match=rf"^{broken}: ({message})") as refused:
            opening()
        assert "\n" not in str(refused.value)


def test_the_packaged_and_exported_ggufs_pass(tiny_gguf):
    from slmkit.models import catalog
    from slmkit.models.validate import validate_gguf

    assert len(validate_gguf(tiny_gguf).tensors) == 21
    packaged = catalog.packaged_path(catalog.lookup(catalog.DEFAULT_MODEL))
    if packaged is not None:
        assert validate_gguf(packaged).fields["general.architecture"].contents() == "llama"


def test_a_missing_tensor_is_refused_by_name_and_llama_cpp_says_why(tiny_gguf, tmp_path):
    """A block that lacks one tensor passes the header checks: llama.cpp's own (captured) log names it, and
    the torch path refuses to start the weight from random values."""
    pytest.importorskip("llama_cpp")
    broken = tmp_path / "broken.gguf"
    shutil.copy(tiny_gguf, broken)
    reader = GGUFReader(broken, "r+")
    tensor_part("blk.0.attn_q.weight", 1, lambda name: name.__setitem__(-1, ord("X")))(reader)
    reader.data.flush()
    del reader
    with pytest.raises(slmkit.SlmError, match=rf"^llama.cpp cannot load {broken}: Failed to load model from file: "
                                              rf".+ \(error loading model: .*tensor 'blk.0.attn_q.weight' not found\)$"):
        open_model(str(broken))
    with pytest.raises(ModelLoadError, match=rf"^{broken}: the file has no tensor for "
                                             r"model.layers.0.self_attn.q_proj.weight; refusing half a model$"):
        slmkit.load(str(broken))


def test_fuzzed_ggufs_end_in_one_line_or_a_working_model():
    """benchmarks/fuzz_inputs.py, seeded and small: mutated headers, metadata, tensor infos and truncations,
    each opened on llama.cpp and torch in a worker process: no traceback, no signal, no hang."""
    pytest.importorskip("llama_cpp")
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "fuzz_inputs.py"
    result = subprocess.run([sys.executable, str(script), "--cases", "60", "--seed", "7", "--timeout", "60",
                             "--json"], capture_output=True, text=True, timeout=600)
    summary = __import__("json").loads(result.stdout[result.stdout.index("{"):])
    assert summary["failures"] == [] and result.returncode == 0
    outcomes = summary["outcomes"]
    assert summary["cases"] == 60 and outcomes["llamacpp refused"] > 0 and outcomes["llamacpp loaded"] > 0
    assert outcomes["torch refused"] > outcomes["llamacpp refused"]  # the safetensors cases are torch's alone
    assert outcomes["data refused"] + outcomes.get("data loaded", 0) == 12
