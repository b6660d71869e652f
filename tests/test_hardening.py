"""Bad files and values get one line naming what is wrong, before anything slow runs or is written."""

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import SAMPLE_TEXT, tiny_model

import slmkit
from slmkit.data import load_labeled
from slmkit.errors import DataError, ModelLoadError, SlmError
from slmkit.models.checkpoint import check_destination


@pytest.fixture
def checkpoint(tmp_path, tiny_tokenizer) -> Path:
    return slmkit.save(tiny_model("llama"), tmp_path / "tiny", tiny_tokenizer)


def test_a_truncated_safetensors_file_is_named(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=rf"^{weights}: truncated safetensors file \(tensor '.+' ends at byte"):
        slmkit.load(str(checkpoint))


def test_a_safetensors_header_claiming_2_to_the_60_bytes_is_named(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(struct.pack("<Q", 2**60) + weights.read_bytes()[8:])
    with pytest.raises(ModelLoadError, match=rf"^{weights}: corrupt safetensors header \(it says {2**60} bytes"):
        slmkit.load(str(checkpoint))


def test_a_bad_pickle_under_allow_pickle_is_one_line(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(ModelLoadError, match=rf"^{checkpoint}: cannot load weights \("):
        slmkit.load(str(checkpoint), allow_pickle=True)


def test_out_is_checked_for_being_creatable_before_any_work(tmp_path, checkpoint, monkeypatch):
    from typer.testing import CliRunner

    import slmkit.runtime.torch_backend
    from slmkit.cli.main import app

    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    with pytest.raises(SlmError, match=rf"^--out {a_file}/sub/out: {a_file} is a file, so nothing can be created"):
        check_destination(a_file / "sub" / "out", force=False)
    with pytest.raises(SlmError, match=r"^--out /proc/slmkit-out: cannot write in /proc \("):
        check_destination(Path("/proc/slmkit-out"), force=False)
    monkeypatch.setattr(slmkit.runtime.torch_backend, "load", lambda *a, **k: pytest.fail("loaded before refusing"))
    for command in (["quantize", str(checkpoint), "--method", "rtn", "--out", str(a_file / "q")],
                    ["export", str(checkpoint), "--out", str(a_file / "m.gguf")]):
        result = CliRunner().invoke(app, command)
        assert isinstance(result.exception, SlmError) and "is a file, so nothing can be created" in str(result.exception)
    assert a_file.read_text() == "keep me"


def test_csv_cells_keep_quoted_newlines_and_delimiters(tmp_path):
    table = tmp_path / "reviews.csv"
    table.write_text('text,label\n"a good\nmovie",pos\n"slow, then great",pos\nbad,neg\n')
    assert load_labeled(table) == [("a good\nmovie", "pos"), ("slow, then great", "pos"), ("bad", "neg")]
    table.write_text('text,label\n"never closed,pos\n')
    with pytest.raises(DataError, match=rf"^{table}:2: unexpected end of data \(a quote that is never closed\?\)$"):
        load_labeled(table)


def test_a_header_that_is_not_text_and_label_is_named(tmp_path):
    table = tmp_path / "dev.tsv"
    table.write_text("text\tlbl\ngreat movie\tpos\n")
    with pytest.raises(DataError, match=rf"^{table}:1: header text, lbl: expected columns named text \(or sentence\)"):
        load_labeled(table)
    table.write_text('he said "hi"\tpos\n')  # no header: two data columns, TSV quotes are text
    assert load_labeled(table) == [('he said "hi"', "pos")]


def test_a_symlink_loop_is_not_called_missing(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(DataError, match="a symbolic link that leads nowhere"):
        load_labeled(loop)
    with pytest.raises(ModelLoadError, match="a symbolic link that leads nowhere"):
        slmkit.load(str(loop))


def test_the_amx_probe_keeps_only_what_it_learnt(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from types import SimpleNamespace

    from slmkit.runtime import llamacpp_open

    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("SLM_LLAMACPP_EXTRA_BUFTS", raising=False)
    reader = SimpleNamespace(tensors=[])
    for returncode, works, kept in [(1, True, False), (-4, False, True), (0, True, True)]:  # -4: SIGILL
        (tmp_path / "llamacpp-probe.json").unlink(missing_ok=True)
        monkeypatch.setattr(subprocess, "run", lambda *a, code=returncode, **k: SimpleNamespace(returncode=code))
        assert llamacpp_open.extra_buffer_types_work(tmp_path / "x.gguf", reader) is works
        cached = tmp_path / "llamacpp-probe.json"
        assert cached.exists() is kept and (not kept or works in json.loads(cached.read_text()).values())


def test_max_length_is_checked_the_same_on_llama_cpp(tmp_path, checkpoint):
    pytest.importorskip("llama_cpp")
    from conftest import run_slm

    from slmkit.evaluation.perplexity import perplexity
    from slmkit.runtime import open_model

    gguf = tmp_path / "tiny.gguf"
    slmkit.export(slmkit.load(str(checkpoint)), gguf, slmkit.GGUFConfig(quant="f32"))
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT)
    result = run_slm("eval", str(gguf), "--data", str(text), "--max-length", "-5")
    assert result.returncode == 2 and result.stderr.strip() == "error: --max-length must be at least 2, got -5"
    llama = open_model(str(gguf), n_ctx=10**9, logits_all=True)  # capped at the trained context, not allocated
    with pytest.raises(SlmError, match=r"^--max-length 1000000000 is longer than the model's context \(128\)$"):
        perplexity(llama, SAMPLE_TEXT, max_length=10**9)


def test_slm_run_checks_its_run_directory_before_any_stage(tmp_path):
    from slmkit.pipeline.recipe import parse_recipe
    from slmkit.pipeline.run import run_recipe

    recipe = parse_recipe("name: x\nstages:\n  - stage: quantize\n    method: rtn\n", "x.yaml")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(SlmError, match=rf"^--out {a_file}/run: {a_file} is a file"):
        run_recipe(recipe, recipe_path="x.yaml", out=a_file / "run")


def test_a_checkpoint_missing_a_weight_is_refused_by_name(checkpoint):
    from safetensors.torch import load_file, save_file

    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=rf"^{checkpoint}: the file has no tensor for "
                                             r"model.layers.1.mlp.down_proj.weight; refusing half a model$"):
        slmkit.load(str(checkpoint))


def test_json_errors_say_where_once(tmp_path, checkpoint):
    records = tmp_path / "broken.jsonl"
    records.write_text('{"text": "fine"}\n{"text": "never closed}\n')
    with pytest.raises(DataError, match=rf"^{records}:2: not valid JSON \(Unterminated string starting at column 10\)$"):
        load_labeled_or_text(records)
    (checkpoint / "config.json").write_text('{"model_type": "llama",\n "x": "open')
    with pytest.raises(ModelLoadError, match=r"not valid JSON \(Unterminated string starting at line 2, column 7\)$"):
        slmkit.load(str(checkpoint))


def load_labeled_or_text(path):
    from slmkit.data import load_text

    return load_text(path)


def test_a_gguf_transformers_cannot_shape_says_so_without_pointing_at_a_hidden_report(tmp_path, tiny_tokenizer):
    """GPT-2's GGUF holds 128 positions; transformers builds 1024 from it and refuses the mismatch."""
    gguf = tmp_path / "gpt2.gguf"
    directory = slmkit.save(tiny_model("gpt2"), tmp_path / "gpt2", tiny_tokenizer)
    slmkit.export(slmkit.load(str(directory)), gguf, slmkit.GGUFConfig(quant="f32"))
    with pytest.raises(ModelLoadError, match=r"transformers cannot load this GGUF \(its tensors' shapes differ") as refused:
        slmkit.load(str(gguf))
    assert "above report" not in str(refused.value)
