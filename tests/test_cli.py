"""The `slm` command as a user runs it: subprocesses, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from conftest import run_slm


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()  # no empty line either (a progress bar's, off a terminal)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_and_the_recipe_schema_start_without_torch():
    """Every verb's command and recipe stage is made from its record (slmkit.verbs.VERBS) without torch, so
    `slm --help` and `slm run`'s recipe checks start in a second."""
    code = ("import sys; from slmkit.cli.main import app; import slmkit.pipeline.recipe; "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    assert "Commands" in run_slm("--help").stdout


def test_info_json(tiny_llama_dir):
    result = run_slm("info", str(tiny_llama_dir), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model_type"] == "llama" and info["layers"] == 2 and info["kv_heads"] == 2


def test_eval_perplexity_json(tiny_llama_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Small models run on laptops. " * 20)
    result = run_slm("eval", str(tiny_llama_dir), "--data", str(text), "--max-length", "32", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["task"] == "perplexity" and metrics["token_perplexity"] > 1


@pytest.mark.parametrize("case", ["missing_file", "malformed_jsonl", "wrong_schema", "pickle", "garbage_gguf",
                                  "hub_offline", "bad_task", "classification_on_lm", "empty_training_data"])
def test_bad_input_is_one_line(case, tiny_llama_dir, tmp_path):
    model = str(tiny_llama_dir)
    if case == "missing_file":
        args, expected = ["eval", model, "--data", str(tmp_path / "absent.txt")], ["absent.txt", "no such file"]
    elif case == "malformed_jsonl":
        (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
        args, expected = ["eval", model, "--data", str(tmp_path / "bad.jsonl")], ["bad.jsonl:2", "not valid JSON"]
    elif case == "wrong_schema":
        (tmp_path / "odd.jsonl").write_text('{"foo": "bar"}\n')
        args, expected = ["eval", model, "--data", str(tmp_path / "odd.jsonl")], ["unknown record schema"]
    elif case == "pickle":
        import torch

        from conftest import tiny_model

        pickled = tmp_path / "pickled"
        net = tiny_model("gpt2")
        net.config.save_pretrained(pickled)
        torch.save(net.state_dict(), pickled / "pytorch_model.bin")
        args, expected = ["info", str(pickled)], ["pickle", "--allow-pickle"]
    elif case == "garbage_gguf":
        (tmp_path / "m.gguf").write_bytes(b"\x00" * 64)
        args, expected = ["info", str(tmp_path / "m.gguf")], ["not a GGUF file"]
    elif case == "hub_offline":
        args, expected = ["info", "no-such-org/no-such-model"], ["unreachable", "local"]
    elif case == "bad_task":
        (tmp_path / "t.txt").write_text("hello")
        args, expected = ["eval", model, "--data", str(tmp_path / "t.txt"), "--task", "poetry"], ["unknown task"]
    elif case == "empty_training_data":  # refused inside the training bar
        (tmp_path / "empty.txt").write_text("\n\n")
        args = ["finetune", model, "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "out")]
        expected = ["empty.txt: empty file"]
    else:
        (tmp_path / "c.tsv").write_text("text\tlabel\nhi\tpos\n")
        args, expected = ["eval", model, "--data", str(tmp_path / "c.tsv")], ["sequence-classification"]
    assert_one_line_error(run_slm(*args), *expected)


def test_generate_greedy_is_repeatable(tiny_llama_dir):
    args = ["generate", "Small models", "-m", str(tiny_llama_dir), "--temperature", "0", "--max-new-tokens", "8"]
    first, second = run_slm(*args), run_slm(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()


def test_bad_sampling_flag(tiny_llama_dir):
    assert_one_line_error(run_slm("generate", "hi", "-m", str(tiny_llama_dir), "--top-p", "1.5"), "--top-p")


def test_chat_through_stdin(tiny_llama_dir):
    result = run_slm("chat", str(tiny_llama_dir), "--temperature", "0", "--max-new-tokens", "6",
                     stdin="hello there\n/reset\nsecond question\n/exit\nnever read\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "(conversation cleared)" in lines
    assert len(lines) == 3  # answer, reset notice, answer; nothing after /exit
