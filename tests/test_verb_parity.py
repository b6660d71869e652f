"""One verb, one schema: the CLI and the library agree on defaults, offer only what works, and resolve a device
once (issue 29)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from typer.testing import CliRunner

import slmkit
from slmkit.cli.main import app
from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN
from slmkit.distill.qat import QATConfig
from slmkit.errors import SlmError
from slmkit.finetune.config import FinetuneConfig

QUICK = dict(start="rtn", steps=1, batch_size=2, device="cpu")


def test_qat_trains_on_as_many_sequences_from_python_as_from_the_cli(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))  # the CLI reuses what the library sampled
    lm = slmkit.load(str(tiny_llama_dir))
    result = slmkit.quantize(lm, QATConfig(**QUICK))  # no Calibration: the defaults
    library = json.loads((slmkit.save(lm, tmp_path / "library", result=result) / "slmkit.json").read_text())

    done = CliRunner().invoke(app, ["quantize", str(tiny_llama_dir), "--method", "qat", "--target", "gguf-q4_0",
                                    "--start", "rtn", "--steps", "1", "--batch-size", "2", "--device", "cpu",
                                    "--out", str(tmp_path / "cli"), "--json"])
    assert done.exit_code == 0, done.output
    cli = json.loads((tmp_path / "cli" / "slmkit.json").read_text())
    for manifest in (library, cli):
        assert (manifest["config"]["calib_samples"], manifest["config"]["calib_seq_len"]) == (QAT_SAMPLES,
                                                                                              QAT_SEQ_LEN)
    held = QATConfig(**QUICK).held_out_count(QAT_SAMPLES)
    assert library["metrics"]["train_sequences"] == cli["metrics"]["train_sequences"] == QAT_SAMPLES - held
    assert library["metrics"]["held_out_sequences"] == cli["metrics"]["held_out_sequences"] == held


def test_qat_takes_its_own_shape_only_where_none_was_asked_for(tmp_path):
    qat = QATConfig()
    assert slmkit.Calibration().for_method(qat).samples == QAT_SAMPLES
    assert slmkit.Calibration(tmp_path / "wiki.txt").for_method(qat).seq_len == QAT_SEQ_LEN  # with text, too
    asked = slmkit.Calibration(samples=10)
    assert (asked.for_method(qat).samples, asked.for_method(qat).seq_len) == (10, QAT_SEQ_LEN)
    shaped = slmkit.Calibration(samples=10, seq_len=32)
    assert shaped.for_method(qat) is shaped  # its sampled ids stay cached on it
    one_shot = slmkit.Calibration()
    assert one_shot.for_method(slmkit.GPTQConfig()) is one_shot


@pytest.mark.parametrize("verb", ["prune", "quantize", "student"])
def test_compression_verbs_offer_no_dtype(verb):
    # Compression rewrites float32 weights on the CPU: no other --dtype could work.
    done = CliRunner().invoke(app, [verb, "--dtype", "bfloat16", "--out", "never"])
    assert done.exit_code == 2 and "No such option: --dtype" in done.output


def test_cuda_n_is_refused_by_every_trainer_config_alike(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("text\n")
    message = ("--device cuda:1: the trainer takes whole device types; pick the GPU with CUDA_VISIBLE_DEVICES=1 "
               "and pass --device cuda")
    for make in (lambda: FinetuneConfig(data=str(data), device="cuda:1"), lambda: QATConfig(device="cuda:1")):
        with pytest.raises(SlmError) as refused:
            make()
        assert str(refused.value) == message


def test_the_quantize_command_resolves_its_device_once(tmp_path, tiny_llama_dir, monkeypatch):
    import slmkit.models.devices as devices

    resolved = []
    real = devices.resolve_device

    def counting(name="auto"):
        if not isinstance(name, torch.device):  # a torch.device is passed on, not resolved again
            resolved.append(name)
        return real(name)

    monkeypatch.setattr(devices, "resolve_device", counting)
    monkeypatch.setattr(importlib.import_module("slmkit.distill.qat"), "resolve_device", counting)
    qat = ["--method", "qat", "--target", "gguf-q4_0", "--start", "rtn", "--steps", "1", "--batch-size", "2",
           "--calib-samples", "3", "--seq-len", "16"]
    for method in (["--method", "rtn", "--group-size", "32"], qat):
        resolved.clear()
        done = CliRunner().invoke(app, ["quantize", str(tiny_llama_dir), *method, "--device", "cpu",
                                        "--calib-cache", "off", "--out", str(tmp_path / method[1])])
        assert done.exit_code == 0, done.output
        assert resolved == ["cpu"], method


def test_qat_refuses_cuda_n_given_to_quantize_before_sampling(tiny_llama_dir, monkeypatch):
    import slmkit.compress.calibration as calibration

    monkeypatch.setattr(calibration, "self_generated", lambda *args, **kwargs: pytest.fail("sampled"))
    with pytest.raises(SlmError, match=r"^--device cuda:1: the trainer takes whole device types"):
        slmkit.quantize(slmkit.load(str(tiny_llama_dir)), QATConfig(**QUICK), device=torch.device("cuda:1"))
