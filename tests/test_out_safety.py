"""No --out may destroy what a command reads; --force only ever replaces an earlier output; two runs never
write one output at once."""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_model
from typer.testing import CliRunner

import slmkit
import slmkit.runtime.torch_backend
from slmkit.cli.main import app
from slmkit.errors import SlmError
from slmkit.models.checkpoint import check_not_input


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or `path` itself) with the SHA-256 of its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def refusal(command: list[str]) -> str:
    """The one-line SlmError a CLI command stops with."""
    result = CliRunner().invoke(app, command)
    assert isinstance(result.exception, SlmError), result.output
    return str(result.exception)


@pytest.fixture
def source(tmp_path, tiny_tokenizer) -> Path:
    return slmkit.save(tiny_model("llama"), tmp_path / "models" / "src", tiny_tokenizer)


@pytest.fixture
def no_loading(monkeypatch):
    """Each refusal must come before the model is opened."""
    monkeypatch.setattr(slmkit.runtime.torch_backend, "load", lambda *a, **k: pytest.fail("loaded before refusing"))


def test_an_out_that_is_the_source_or_holds_it_is_refused_with_or_without_force(source, no_loading, tmp_path):
    data = tmp_path / "data" / "train.txt"
    data.parent.mkdir()
    data.write_text("some training text\n" * 20)
    before = tree_digest(tmp_path)
    holder = source.parent
    for verb in (["quantize", "--method", "rtn"], ["prune", "--method", "magnitude", "--sparsity", "0.5"],
                 ["student", "--depth", "1"]):
        for out, how in ((source, "is"), (Path(f"{source}/."), "is"), (holder, "holds")):
            for force in ([], ["--force"]):
                message = refusal([verb[0], str(source), *verb[1:], "--out", str(out), *force])
                assert message == (f"--out {Path(str(out))} {how} {source}, which this command reads; choose "
                                   "another --out (--force replaces an earlier output, never an input)")
    for verb in (["finetune", str(source)], ["distill", str(tmp_path / "elsewhere"), "--teacher", str(source)]):
        message = refusal([*verb, "--data", str(data), "--out", str(source), "--force"])
        assert message.startswith(f"--out {source} is {source}, which this command reads")
    message = refusal(["finetune", str(source), "--data", str(data), "--out", str(data.parent), "--force"])
    assert message.startswith(f"--out {data.parent} holds {data}, which this command reads")
    assert tree_digest(tmp_path) == before


def test_export_never_writes_over_the_gguf_it_reads(tmp_path, no_loading):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")
    for force in ([], ["--force"]):
        message = refusal(["export", str(gguf), "--out", str(gguf), *force])
        assert message.startswith(f"--out {gguf} is {gguf}, which this command reads")
    assert gguf.read_bytes() == b"GGUF not really"


def test_a_file_inside_the_model_directory_is_never_replaced_but_a_new_one_may_be_written(source, no_loading):
    config = source / "config.json"
    before = tree_digest(source)
    for force in ([], ["--force"]):
        message = refusal(["quantize", str(source), "--method", "rtn", "--out", str(config), *force])
        assert message == (f"--out {config} is a file of {source}, which this command reads; choose another --out "
                           "(--force replaces an earlier output, never an input)")
    assert tree_digest(source) == before
    check_not_input(source / "model.gguf", [source])  # a new file beside the weights destroys nothing


def test_the_library_refuses_to_save_over_the_model_it_loaded(source):
    lm = slmkit.load(str(source))
    before = tree_digest(source)
    with pytest.raises(SlmError, match=rf"^--out {source} is {source}, which this command reads"):
        slmkit.save(lm, source, force=True)
    assert tree_digest(source) == before


def test_an_empty_out_or_the_current_directory_is_refused_before_any_work(source, no_loading, tmp_path,
                                                                           monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for out in ("", "."):
        message = refusal(["quantize", str(source), "--method", "rtn", "--out", out])
        assert message == ("--out .: that is the current directory (or holds it); name a directory to create, "
                           "e.g. --out out/model")
    assert list(empty.iterdir()) == []


def test_finetune_force_replaces_an_earlier_output(tiny_llama_dir, tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("small models run on small machines.\n" * 40)
    out = tmp_path / "tuned"
    out.mkdir()
    (out / "old.txt").write_text("an earlier output")
    command = ["finetune", str(tiny_llama_dir), "--data", str(data), "--out", str(out), "--max-steps", "1",
               "--batch-size", "2", "--max-length", "32", "--device", "cpu"]
    assert refusal(command) == f"{out} is not empty; choose another --out or pass --force to replace it"
    result = CliRunner().invoke(app, [*command, "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()


def test_synth_never_appends_to_its_own_prompts(tmp_path, no_loading):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    message = refusal(["synth", "--prompts", str(prompts), "--out", str(prompts)])
    assert message.startswith(f"--out {prompts} is {prompts}, which this command reads")
    assert prompts.read_text() == '{"prompt": "hi"}\n'


def test_a_second_run_on_the_same_out_is_refused_before_its_work(source, no_loading, tmp_path):
    out = tmp_path / "quantized"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from slmkit.models.checkpoint import claim_output
            claim_output({str(out)!r})
            print("claimed", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        message = refusal(["quantize", str(source), "--method", "rtn", "--out", str(out)])
        assert message == (f"--out {out} is being written by another slm process (pid {holder.pid}); wait for it "
                           "to finish or choose another --out")
    finally:
        holder.communicate("\n", timeout=30)
    assert not out.exists()
    # The claim ends with the process that held it: the same output can be claimed again.
    from slmkit.models.checkpoint import claimed

    with claimed(out):
        assert os.path.realpath(out) in slmkit.models.checkpoint._claims
