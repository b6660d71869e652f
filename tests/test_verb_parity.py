"""One verb, one schema: the CLI and the library agree on defaults, offer only what works, and resolve a device
once (issue 29)."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch
from typer.testing import CliRunner

import slmkit
from slmkit.cli.main import app
from slmkit.compress.calibration import Calibration
from slmkit.distillation.qat import QATConfig
from slmkit.errors import SlmError
from slmkit.finetuning.config import FinetuneConfig
from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN

QUICK = dict(start="rtn", steps=1, batch_size=2, device="cpu")


def test_each_verb_is_one_record_that_the_cli_and_the_recipe_both_take():
    """slmkit.verbs.VERBS is the one table: `slm <verb>` takes the verb's settings as its options, and the recipe
    stage of the same name (and prune's structured, quantize's qat) runs the same record."""
    import typer

    from slmkit.pipeline.registry import STAGES
    from slmkit.verbs import VERBS

    commands = typer.main.get_command(app).commands
    assert [name for name in commands if name in VERBS] == list(VERBS)  # in slm --help's order
    assert list(VERBS) == ["eval", "bench", "prune", "quantize", "export", "finetune", "synth", "student", "distill"]
    for verb in VERBS.values():
        assert commands[verb.name].callback.config_class is verb.settings, verb.name
    made_by = {name: kind.schema.verb.name for name, kind in STAGES.items()}
    assert made_by == {"eval": "eval", "bench": "bench", "prune": "prune", "structured": "prune",
                       "quantize": "quantize", "qat": "quantize", "export": "export", "finetune": "finetune",
                       "synth": "synth", "distill": "distill"}  # student: no recipe stage (VERBS["student"].recipe)
    for name, kind in STAGES.items():
        verb = kind.schema.verb
        assert (kind.schema.config_class, kind.schema.makes_model) == (verb.settings, verb.makes_model), name


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
    from slmkit.models.devices import resolve_device as real

    resolved = []

    def counting(name="auto"):
        if not isinstance(name, torch.device):  # a torch.device is passed on, not resolved again
            resolved.append(name)
        return real(name)

    for module in ("slmkit.models.devices", "slmkit.verbs.compress", "slmkit.distillation.qat"):
        monkeypatch.setattr(importlib.import_module(module), "resolve_device", counting)
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


def captured_settings(monkeypatch, arguments: list[str]):
    """The QuantizeSettings `slm quantize ...` runs its stage with."""
    from slmkit.verbs import quantize

    seen = []

    def record(settings, *args, **kwargs):
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr(quantize, "run", record)
    done = CliRunner().invoke(app, ["quantize", "m", "--out", "never", *arguments])
    assert done.exit_code == 0 and seen, done.output
    return seen[0]


def test_quantize_and_qat_take_one_schema_from_the_cli_the_library_and_a_recipe(monkeypatch):
    from slmkit.pipeline.stages.quantize import QATStage, QuantizeStage
    from slmkit.verbs.quantize import QuantizeSettings

    assert captured_settings(monkeypatch, []) == QuantizeStage(stage="quantize").settings() == QuantizeSettings()
    qat = QuantizeSettings(method="qat", target="gguf-q4_0")
    assert captured_settings(monkeypatch, ["--method", "qat", "--target", "gguf-q4_0"]) == qat
    # The stage's target is the one QAT trains on, and it writes QAT's sequence shape out (as run.json always had it)
    stage = QATStage(stage="qat").settings()
    assert stage == dataclasses.replace(qat, calib_samples=QAT_SAMPLES, calib_seq_len=QAT_SEQ_LEN)
    for settings in (qat, stage):  # the same sequences from the command and the recipe
        calibration = Calibration.from_settings(settings).for_method(settings.method_config())
        assert (calibration.samples, calibration.seq_len) == (QAT_SAMPLES, QAT_SEQ_LEN)
    asked = captured_settings(monkeypatch, ["--data", "wiki.txt", "--seq-len", "32", "--sym"])
    assert (asked.calib.name, asked.calib_seq_len, asked.symmetric) == ("wiki.txt", 32, True)


def test_qat_settings_are_refused_by_the_library_and_the_recipe_alike():
    from slmkit.pipeline.recipe import parse_recipe
    from slmkit.verbs.quantize import QuantizeSettings

    with pytest.raises(SlmError, match=r"^--steps, --lr, --batch-size and --start are QAT's: use them with --method"):
        QuantizeSettings(method="gptq", steps=5)
    with pytest.raises(SlmError, match=r"stages\[0\] \(qat\): QAT holds 1 of its 1 sequences out"):
        parse_recipe("name: x\nstages:\n  - stage: qat\n    calib_samples: 1\n", "r.yaml")  # before the run
