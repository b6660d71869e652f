"""Odd input files and Ctrl-C: one line naming the file (or what stopped), the right exit status, nothing written."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SAMPLE_TEXT

from slmkit.cli.main import main
from slmkit.data import load_labeled, load_text
from slmkit.data.loaders import infer_task, read_jsonl
from slmkit.data.training import training_data
from slmkit.errors import DataError
from slmkit.pipeline.recipe import load_recipe

BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark: what Excel and Notepad write first


@pytest.fixture
def slm(monkeypatch, capsys):
    """`slm ARGS` in this process, through the console entry point: (exit status, the lines it printed on stderr;
    blank ones left out: rich ends a progress display on a non-terminal with an empty line)."""

    def run(*args) -> tuple[int, list[str]]:
        monkeypatch.setattr(sys, "argv", ["slm", *map(str, args)])
        with pytest.raises(SystemExit) as stopped:
            main()
        return stopped.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]

    return run


def not_loaded(*args, **kwargs):
    pytest.fail("the model was loaded before the file was refused")


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt  # what Python raises when SIGINT (Ctrl-C) arrives


# --- empty training data --------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", "\n\n   \n\t\n"], ids=["empty", "blank-lines"])
@pytest.mark.parametrize("flags", [["--data", "{data}"], ["--data", "{data}", "--task", "text"],
                                   ["--data", "{sample}", "--eval-data", "{data}"]],
                         ids=["inferred-task", "explicit-task", "eval-data"])
def test_finetune_and_distill_refuse_an_empty_file_before_loading(slm, tmp_path, tiny_llama_dir, monkeypatch,
                                                                   content, flags):
    import slmkit.models.loading

    data, sample = tmp_path / "train.txt", tmp_path / "sample.txt"
    data.write_text(content)
    sample.write_text(SAMPLE_TEXT)
    monkeypatch.setattr(slmkit.models.loading, "load", not_loaded)
    flags = [flag.format(data=data, sample=sample) for flag in flags]
    for command in (["finetune", tiny_llama_dir], ["distill", tiny_llama_dir, "--teacher", tiny_llama_dir]):
        assert slm(*command, *flags, "--out", tmp_path / "out") == (2, [f"error: {data}: empty file"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sample.txt", "train.txt"]


def test_text_training_data_from_blank_lines_is_refused_by_the_library_too(tmp_path, tiny_tokenizer):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n")
    with pytest.raises(DataError, match=rf"^{blank}: empty file$"):
        training_data("text", blank, tiny_tokenizer, max_length=32)


# --- recipes that are not text, or nested past the parser's recursion ----------------------------------------

TOO_DEEP = "nested too deeply to be a recipe (lists or mappings hundreds of levels deep)"


@pytest.mark.parametrize("content, problem", [
    (bytes(range(128, 256)) * 4, "not UTF-8 text (byte 0); a recipe is a YAML file"),
    (b"[" * 100_000, TOO_DEEP),
    (b"name: x\nstages: " + b"{a: " * 100_000, TOO_DEEP),
], ids=["binary", "100000-brackets", "100000-mappings"])
def test_slm_run_refuses_a_recipe_it_cannot_read_in_one_line(slm, tmp_path, monkeypatch, content, problem):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    monkeypatch.chdir(tmp_path)  # where the default run directory (runs/) would go
    assert slm("run", recipe) == (2, [f"error: {recipe}: {problem}"])
    assert [path.name for path in tmp_path.iterdir()] == ["recipe.yaml"]


# --- a UTF-8 byte-order mark at the start of a file -----------------------------------------------------------

@pytest.mark.parametrize("name, table", [("train.tsv", "text\tlabel\ngood\tpos\nbad\tneg\n"),
                                         ("train.csv", "text,label\ngood,pos\nbad,neg\n")])
def test_a_table_whose_header_starts_with_a_byte_order_mark_is_read(tmp_path, name, table):
    path = tmp_path / name
    path.write_bytes(BOM + table.encode())
    assert load_labeled(path) == [("good", "pos"), ("bad", "neg")]
    assert infer_task(path, training=True) == "classification"


def test_jsonl_text_and_recipes_with_a_byte_order_mark_are_read(tmp_path):
    records, text, recipe = tmp_path / "chat.jsonl", tmp_path / "notes.txt", tmp_path / "recipe.yaml"
    records.write_bytes(BOM + b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    text.write_bytes(BOM + b"some text\n")
    recipe.write_bytes(BOM + b"name: bom\nstages:\n  - stage: bench\n")
    assert read_jsonl(records) == [{"messages": [{"role": "user", "content": "hi"}]}]
    assert infer_task(records, training=True) == "chat"
    assert load_text(text) == "some text\n"
    assert load_recipe(recipe).name == "bom"


def test_a_byte_that_is_not_utf8_is_still_counted_from_the_start_of_the_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(BOM + b"ab\xff")
    with pytest.raises(DataError, match=rf"^{path}: not UTF-8 text \(byte 5\)$"):
        load_text(path)


def test_a_data_file_that_is_only_a_byte_order_mark_is_empty(slm, tmp_path, tiny_llama_dir):
    data = tmp_path / "train.txt"
    data.write_bytes(BOM + b"\n")
    assert slm("finetune", tiny_llama_dir, "--data", data, "--out", tmp_path / "out") == \
        (2, [f"error: {data}: empty file"])
    assert not (tmp_path / "out").exists()


# --- Ctrl-C ---------------------------------------------------------------------------------------------------

def test_ctrl_c_while_quantize_writes_says_so_and_leaves_nothing(slm, tmp_path, tiny_llama_dir, monkeypatch):
    from transformers import PreTrainedModel

    def interrupt_mid_write(self, save_directory, *args, **kwargs):
        (Path(save_directory) / "model.safetensors").write_bytes(b"the first half")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", interrupt_mid_write)
    out = tmp_path / "q"
    quantize = ["quantize", tiny_llama_dir, "--method", "rtn", "--group-size", "0", "--fake-quant", "--out", out]
    assert slm(*quantize) == (130, [f"interrupted: slm quantize stopped; nothing was written to {out}"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, message", [
    (["eval", "{model}", "--data", "{text}"], "interrupted: slm eval stopped"),
    (["synth", "--teacher", "{model}", "--prompts", "{text}", "--out", "{out}.jsonl"],
     "interrupted: slm synth stopped; the records written so far stay in {out}.jsonl; run it again to resume"),
], ids=["eval", "synth"])
def test_ctrl_c_names_the_command_and_what_it_kept(slm, tmp_path, tiny_llama_dir, monkeypatch, command, message):
    import slmkit.runtime.torch_backend

    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT)
    monkeypatch.setattr(slmkit.runtime.torch_backend, "load", interrupt)
    names = {"model": tiny_llama_dir, "text": text, "out": tmp_path / "out"}
    assert slm(*[part.format(**names) for part in command]) == (130, [message.format(**names)])
    assert [path.name for path in tmp_path.iterdir()] == ["text.txt"]


def test_ctrl_c_in_slm_run_says_the_finished_stages_are_kept(slm, tmp_path, monkeypatch):
    import slmkit.cli.run

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: r\nstages:\n  - stage: bench\n")
    monkeypatch.setattr(slmkit.cli.run, "run_recipe", interrupt)
    assert slm("run", recipe, "--out", tmp_path / "run") == \
        (130, [f"interrupted: slm run stopped; the stages finished so far stay in {tmp_path / 'run'}; run it again "
               "to resume"])


def test_ctrl_c_in_finetune_points_at_the_checkpoint_to_resume_from(slm, tmp_path, tiny_llama_dir, monkeypatch):
    import slmkit.models.loading

    data, out = tmp_path / "train.txt", tmp_path / "ft"
    data.write_text(SAMPLE_TEXT)
    (tmp_path / "ft.checkpoints" / "checkpoint-3").mkdir(parents=True)  # what --save-every left
    monkeypatch.setattr(slmkit.models.loading, "load", interrupt)
    assert slm("finetune", tiny_llama_dir, "--data", data, "--out", out, "--resume") == \
        (130, [f"interrupted: slm finetune stopped; nothing was written to {out} (its last checkpoint is in "
               f"{out}.checkpoints: the same command with --resume continues)"])
    assert not out.exists()


def test_sigint_during_finetune_prints_one_line_and_writes_nothing(tmp_path, tiny_llama_dir):
    """A real SIGINT to a real `slm finetune` process, sent once its training run has begun."""
    data, out = tmp_path / "train.txt", tmp_path / "ft"
    data.write_text(SAMPLE_TEXT)
    process = subprocess.Popen(
        [sys.executable, "-m", "slmkit.cli.main", "finetune", str(tiny_llama_dir), "--data", str(data), "--out",
         str(out), "--max-steps", "100000", "--save-every", "0", "--max-length", "32", "--device", "cpu"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = out.with_name("ft.checkpoints") / "run.json"  # written just before the first step
    deadline = time.monotonic() + 240
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not started.exists():
        process.kill()
        pytest.fail(f"training never began: {process.communicate()[1]}")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stdout == ""
    assert stderr.strip() == f"interrupted: slm finetune stopped; nothing was written to {out}"
    assert not out.exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary directory


def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_training_at_the_step_end(tmp_path, tiny_tokenizer,
                                                                                 monkeypatch):
    """Python drops a KeyboardInterrupt raised inside `__del__` (the garbage collector's finalizers, which the
    Trainer runs for seconds under load): the run stops at the end of that step instead of training on."""
    import os

    from transformers import TrainerCallback

    from conftest import tiny_model
    from slmkit.data.training import collator
    from slmkit.train.base import SlmTrainer, training_arguments
    from slmkit.train.run import TrainingRun

    class InterruptedWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10_000))  # Python code after the signal: its handler runs here, inside the finalizer

    class DropOneAtStepTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                InterruptedWhileCollected()  # collected at once, its KeyboardInterrupt swallowed

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_type))
    rows = [{"input_ids": list(range(1 + row, 17 + row))} for row in range(8)]
    args = training_arguments(str(tmp_path / "run"), max_steps=50, per_device_train_batch_size=2, use_cpu=True,
                              save_strategy="no", report_to=[])
    run = TrainingRun(SlmTrainer, tiny_model("llama"), args, train=rows, held_out=rows[:2],
                      collator=collator("text", tiny_tokenizer), tokenizer=tiny_tokenizer,
                      callbacks=[DropOneAtStepTwo()])
    with pytest.raises(KeyboardInterrupt):
        run.train()
    assert swallowed == [KeyboardInterrupt]  # the first one was lost, as Python loses it
    assert run.trainer.state.global_step == 3  # stopped at the next step's end, not after 50
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back
