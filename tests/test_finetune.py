"""`slm finetune` on tiny models: LoRA merge, resume after kill -9, SIGTERM, NaN, DDP, a classifier head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_slm, tiny_model

import slmkit
from slmkit.errors import SlmError
from slmkit.finetuning import FinetuneConfig, checkpoint_dir


def chat_file(path: Path, count: int = 24) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {name: tensor for file in sorted(directory.glob("*.safetensors")) for name, tensor in load_file(file).items()}


def small(data: Path, **overrides) -> FinetuneConfig:
    settings = dict(data=str(data), max_steps=6, batch_size=4, max_length=64, save_every=2, lr=1e-3, device="cpu")
    return FinetuneConfig(**{**settings, **overrides})


def test_lora_merge_equals_the_adapter_and_the_adapter_opens_on_its_base(tmp_path, tiny_llama_dir):
    data = chat_file(tmp_path / "chat.jsonl")
    adapter = slmkit.finetune(str(tiny_llama_dir), tmp_path / "adapter", small(data, lora=True, max_steps=3))
    merged = slmkit.finetune(str(tiny_llama_dir), tmp_path / "merged", small(data, lora=True, merge=True,
                                                                            max_steps=3))
    assert adapter.completed and merged.completed
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "config.json").exists()
    manifest = json.loads((tmp_path / "adapter" / "slmkit.json").read_text())
    assert manifest["parent"] == str(tiny_llama_dir.resolve()) and manifest["adapter"]
    assert not checkpoint_dir(tmp_path / "adapter").exists()  # removed once the output is complete

    ids = torch.tensor([[5, 17, 42, 99, 3]])
    from_adapter = slmkit.load(str(tmp_path / "adapter")).model(ids).logits
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # plain transformers opens the merge
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        assert torch.allclose(from_adapter, plain(ids).logits, atol=1e-5)
        assert not torch.allclose(plain(ids).logits, base(ids).logits, atol=1e-4)  # training changed it


KILL_AT_STEP_5 = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import slmkit
from test_finetune import small
def progress(step, total, facts):
    if step == 5:
        os.kill(os.getpid(), signal.SIGKILL)
slmkit.finetune({model!r}, {out!r}, small({data!r}), progress=progress)
"""


def test_resume_after_kill_9_gives_the_uninterrupted_weights_bit_for_bit(tmp_path, tiny_llama_dir):
    data = chat_file(tmp_path / "chat.jsonl")
    whole = slmkit.finetune(str(tiny_llama_dir), tmp_path / "whole", small(data))
    assert whole.completed and whole.step == 6

    script = KILL_AT_STEP_5.format(tests=str(Path(__file__).parent), model=str(tiny_llama_dir),
                                   out=str(tmp_path / "resumed"), data=str(data))
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = checkpoint_dir(tmp_path / "resumed")
    assert sorted(p.name for p in saved.glob("checkpoint-*")) == ["checkpoint-4"]
    assert not (tmp_path / "resumed").exists()

    with pytest.raises(SlmError, match="--resume"):  # an interrupted run is never silently restarted
        slmkit.finetune(str(tiny_llama_dir), tmp_path / "resumed", small(data))
    with pytest.raises(SlmError, match="lr was 0.001"):
        slmkit.finetune(str(tiny_llama_dir), tmp_path / "resumed", small(data, resume=True, lr=2e-3))
    resumed = slmkit.finetune(str(tiny_llama_dir), tmp_path / "resumed", small(data, resume=True))
    assert resumed.completed and resumed.step == 6
    expected, got = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path, tiny_llama_dir):
    data = chat_file(tmp_path / "chat.jsonl", count=200)
    out = tmp_path / "ft"
    process = subprocess.Popen([sys.executable, "-m", "slmkit.cli.main", "finetune", str(tiny_llama_dir), "--data",
                                str(data), "--out", str(out), "--max-steps", "100000", "--batch-size", "2",
                                "--save-every", "0", "--device", "cpu"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    run_file = checkpoint_dir(out) / "run.json"
    deadline = time.monotonic() + 120
    while not run_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # into the training loop, where the handler is installed
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "--resume" in err
    assert len(list(checkpoint_dir(out).glob("checkpoint-*"))) == 1
    assert not out.exists()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_llama_dir):
    data = chat_file(tmp_path / "chat.jsonl")
    config = small(data, save_every=1, max_steps=20)
    config.lr = 1e30  # past the check: the weights overflow after the first real update
    with pytest.raises(SlmError, match=r"the loss became (nan|inf) at step \d+; stopped \(the last good checkpoint"):
        slmkit.finetune(str(tiny_llama_dir), tmp_path / "ft", config)
    assert not (tmp_path / "ft").exists()
    kept = list(checkpoint_dir(tmp_path / "ft").glob("checkpoint-*"))
    assert len(kept) == 1
    assert all(torch.isfinite(t).all() for t in weights(kept[0]).values())


def test_a_classification_head_learns_a_separable_set_and_keeps_the_label_names(tmp_path, tiny_tokenizer):
    encoder = tmp_path / "bert"
    slmkit.save(tiny_model("bert"), encoder, tiny_tokenizer, stage="test")
    rows = ["small models run on a phone\tpositive" for _ in range(24)] + \
           ["large models need a data centre\tnegative" for _ in range(24)]
    data = tmp_path / "train.tsv"
    data.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    result = slmkit.finetune(str(encoder), tmp_path / "clf", FinetuneConfig(
        data=str(data), epochs=4, batch_size=8, lr=3e-3, max_length=32, device="cpu", eval_fraction=0.25))
    assert result.summary["eval_accuracy"] == 1.0
    assert result.record["heldout"] == tmp_path / "clf" / "heldout.csv" and result.record["heldout"].is_file()
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["architectures"] == ["BertForSequenceClassification"]


DDP_ARGS = ["--max-steps", "3", "--max-length", "64", "--lr", "1e-3", "--save-every", "0", "--device", "cpu",
            "--task", "text"]


def test_two_process_ddp_equals_one_process_with_the_doubled_batch(tmp_path, tiny_llama_dir):
    # Equal-length documents: every row has the same tokens, so per-process means average to the global one.
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"document number {i:03d} says hello"}) + "\n" for i in range(40)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = run_slm("finetune", str(tiny_llama_dir), "--data", str(data), "--out", str(tmp_path / "one"),
                  "--batch-size", "4", *DDP_ARGS)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                          "slmkit.cli.main", "finetune", str(tiny_llama_dir), "--data", str(data), "--out",
                          str(tmp_path / "two"), "--batch-size", "2", *DDP_ARGS],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    expected, got = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_llama_dir, tiny_tokenizer):
    data = chat_file(tmp_path / "chat.jsonl")
    with pytest.raises(SlmError, match="--merge merges a LoRA adapter"):
        FinetuneConfig(data=str(data), merge=True)
    with pytest.raises(SlmError, match="no such file"):
        slmkit.finetune(str(tiny_llama_dir), tmp_path / "ft", FinetuneConfig(data=str(tmp_path / "missing.jsonl")))
    with pytest.raises(SlmError, match="--max-steps 0"):
        FinetuneConfig(data=str(data), max_steps=0)
    with pytest.raises(SlmError, match="--lora-targets wq: no linear layer"):
        slmkit.finetune(str(tiny_llama_dir), tmp_path / "ft", small(data, lora=True, lora_targets="q_proj,wq"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    with pytest.raises(SlmError, match="is not empty"):
        slmkit.finetune(str(tiny_llama_dir), tmp_path / "taken", small(data))
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"
    encoder = tmp_path / "bert"
    slmkit.save(tiny_model("bert"), encoder, tiny_tokenizer, stage="test")
    with pytest.raises(SlmError, match=r"chat fine-tuning needs a causal language model; this is an encoder \(bert\)"):
        slmkit.finetune(str(encoder), tmp_path / "ft", small(data))
    assert not (tmp_path / "ft").exists() and not checkpoint_dir(tmp_path / "ft").exists()
    result = run_slm("finetune", str(tiny_llama_dir), "--data", str(data), "--out", str(tmp_path / "x"), "--merge")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--merge" in result.stderr


def test_a_fine_tuned_t5_answers_what_it_was_taught(tmp_path, tiny_tokenizer):
    base = tmp_path / "t5"
    slmkit.save(tiny_model("t5"), base, tiny_tokenizer, stage="test")
    pairs = [{"input": "small models run on", "target": "a phone"}] * 16
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    result = slmkit.finetune(str(base), tmp_path / "ft", FinetuneConfig(
        data=str(data), max_steps=40, batch_size=8, lr=1e-2, max_length=32, device="cpu", save_every=0))
    assert result.task == "seq2seq" and result.summary["eval_loss"] < 0.5
    answer = "".join(slmkit.generate(slmkit.load(str(tmp_path / "ft")), "small models run on",
                                     slmkit.SamplingConfig(temperature=0, max_new_tokens=8)))
    assert answer.strip() == "a phone"


def test_packed_text_trains_and_records_the_run(tmp_path, tiny_llama_dir):
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(f"document {i} is short." for i in range(30)))
    result = slmkit.finetune(str(tiny_llama_dir), tmp_path / "ft", small(data, packing=True, max_steps=4))
    manifest = json.loads((tmp_path / "ft" / "slmkit.json").read_text())
    assert result.task == "text" and manifest["stage"] == "finetune"
    assert manifest["config"]["packing"] and manifest["config"]["data_sha256"]
    assert [step for step, _ in manifest["config"]["loss_curve"]["train"]] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["use_cache"] is True


def test_a_setting_that_names_its_trainer_argument_reaches_the_trainer_with_no_other_edit(tmp_path):
    from dataclasses import dataclass

    from slmkit.data.tasks import TASKS
    from slmkit.schema import setting
    from slmkit.train.lifecycle import _arguments

    @dataclass
    class Clipped(FinetuneConfig):
        clip: float = setting("Gradient norm clipped to.", 0.25, trainer="max_grad_norm")

    config = Clipped(data=str(chat_file(tmp_path / "chat.jsonl")), batch_size=3, seed=7, device="cpu")
    args = _arguments(config, TASKS["chat"], 24, tmp_path / "checkpoints")
    assert args.max_grad_norm == 0.25  # transformers' default is 1.0
    # the declared ones beside it, each filling every argument it names
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (3, 3)
    assert (args.seed, args.data_seed) == (7, 7)
