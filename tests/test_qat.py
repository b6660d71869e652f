"""Quantization-aware training on q4_0's grid: the STE forward is the exporter's values, gradients reach the
latent weights and scales, training lowers the KL to the float model, and the GGUF holds the trained codes."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from conftest import SAMPLE_TEXT, run_slm, tiny_config

import slmkit
from slmkit.compress.block_grid import BlockParams
from slmkit.compress.blocks import block_format
from slmkit.compress.grid import fake_quantize, group_params
from slmkit.distillation.qat import GridLinear, QATConfig, grid_weight
from slmkit.errors import SlmError
from slmkit.exporters.gguf import _permute_rows


@pytest.fixture(scope="module")
def sharp_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny llama with weights large enough that 4 bits change its distributions (the shared tiny model's
    are nearly uniform: its KL to any quantized copy is ~1e-5)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.initializer_range = 0.2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    return slmkit.save(model, tmp_path_factory.mktemp("qat") / "sharp-llama", tiny_tokenizer, stage="test")


def q4_0_scales(weight: torch.Tensor) -> torch.Tensor:
    scale, _ = group_params(weight.reshape(-1, 32), 4, True, float16_scales=True)
    return scale.reshape(weight.shape[0], -1)


def test_the_grid_forward_is_what_a_q4_0_block_dequantizes_to():
    torch.manual_seed(0)
    weight = torch.randn(16, 96) * 0.05
    scale = (q4_0_scales(weight) * 0.8).half().float()  # clipped: some codes hit -8 / 7
    values = grid_weight(weight, scale)
    codes = torch.round(values / scale.repeat_interleave(32, dim=1))
    # q4_0's bytes as the exporter packs them: code i of the block format is level i - 8
    blocks = block_format("q4_0").pack((codes + 8).to(torch.uint8), BlockParams(d=scale.half()))
    stored = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0).reshape(weight.shape)
    np.testing.assert_array_equal(stored, values.numpy())
    assert codes.min() == -8 and codes.max() == 7
    # the same values the one-shot quantizers write for that scale
    grouped = fake_quantize(weight.reshape(-1, 32), scale.reshape(-1, 1), torch.zeros(1), 4, True)
    assert torch.equal(grouped.reshape(weight.shape), values)


def test_gradients_pass_the_rounding_and_stop_at_the_clamp():
    torch.manual_seed(0)
    weight = (torch.randn(4, 32) * 0.05).requires_grad_()
    scale = (q4_0_scales(weight.detach()) * 0.7).requires_grad_()
    upstream = torch.randn(4, 32)
    (grid_weight(weight, scale) * upstream).sum().backward()
    rounded = (weight.detach() / scale.detach().half().float().repeat_interleave(32, dim=1)).round()
    clamped = (rounded < -8) | (rounded > 7)
    assert clamped.any() and (~clamped).any()
    # straight through the rounding: (upstream x scale) / scale
    torch.testing.assert_close(weight.grad[~clamped], upstream[~clamped], rtol=1e-6, atol=0)
    assert torch.all(weight.grad[clamped] == 0)  # nothing through the clamp
    assert scale.grad is not None and scale.grad.abs().sum() > 0


def test_qat_lowers_the_kl_and_exports_its_codes_bit_for_bit(tmp_path, sharp_llama_dir):
    from slmkit.exporters.gguf import export_gguf

    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT * 8)
    lm = slmkit.load(str(sharp_llama_dir))
    result = slmkit.quantize(lm, QATConfig(start="rtn", steps=30, lr=3e-4, batch_size=4, held_out=2, device="cpu"),
                             slmkit.Calibration(calib, samples=10, seq_len=32), target="gguf-q4_0")
    metrics = result.metrics
    assert metrics["kl_after"] < 0.9 * metrics["kl_before"]  # on held-out sequences
    assert metrics["steps"] == 30 and metrics["tokens"] == 30 * 4 * 32 and metrics["train_sequences"] == 8
    assert result.config["loss_curve"]["train"] and result.config["calib"] == str(calib)
    assert not any(isinstance(module, GridLinear) for module in lm.model.modules())
    out = slmkit.save(lm, tmp_path / "qat", result=result)

    saved = slmkit.load(str(out))
    written = export_gguf(saved, tmp_path / "qat.q4_0.gguf", "q4_0")
    assert len(written.exact_layers) == 7 * 2 and not written.requantized_layers
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(written.path).tensors}
    config = saved.model.config
    for index, block in enumerate(saved.model.model.layers):
        for kind, module, heads in [("attn_q", block.self_attn.q_proj, config.num_attention_heads),
                                    ("attn_k", block.self_attn.k_proj, config.num_key_value_heads),
                                    ("ffn_down", block.mlp.down_proj, None), ("ffn_up", block.mlp.up_proj, None)]:
            weight = module.weight.detach().numpy()
            stored = gguf.quants.dequantize(tensors[f"blk.{index}.{kind}.weight"].data,
                                            gguf.GGMLQuantizationType.Q4_0).reshape(weight.shape)
            np.testing.assert_array_equal(stored, _permute_rows(weight, heads) if heads else weight)
    # the scales moved off RTN's (the block's signed extreme / -8): training changed the grid, not only the codes
    original = slmkit.load(str(sharp_llama_dir)).model.model.layers[0].mlp.down_proj.weight.detach()
    trained = result.quant_params["model.layers.0.mlp.down_proj"][0]
    assert trained.shape == (original.shape[0], original.shape[1] // 32)
    assert not torch.equal(trained, q4_0_scales(original))


def test_qat_without_data_trains_on_the_models_own_text(tmp_path, tiny_llama_dir):
    lm = slmkit.load(str(tiny_llama_dir))
    result = slmkit.quantize(lm, QATConfig(start="gptq", steps=4, lr=1e-3, batch_size=2, held_out=1, device="cpu"),
                             slmkit.Calibration(None, samples=5, seq_len=16))
    assert result.config["calib"] == "self-generated" and result.metrics["train_sequences"] == 4
    assert result.metrics["kl_before"] > 0 and np.isfinite(result.metrics["kl_after"])


def _trained_from_rtn(lm, ids, watched: str = "model.layers.0.mlp.down_proj", **settings):
    """A few QAT steps from the RTN start on `ids`: (start scales, trained scales, the `watched` layer's latent
    weight and scale after each step)."""
    import copy

    from slmkit.distillation.qat import start_on_grid, train_on_grid

    config = QATConfig(start="rtn", steps=4, lr=1e-3, batch_size=2, held_out=1, device="cpu", **settings)
    teacher = copy.deepcopy(lm.model).eval()
    start = start_on_grid(lm.model, config, ids[1:], torch.device("cpu"))
    seen = [(lm.model.get_submodule(watched).weight.detach().clone(), start.scales[watched])]

    def after_step(step, total):
        layer = lm.model.get_submodule(watched)
        seen.append((layer.weight.detach().clone(), layer.scale.detach().clone()))

    _, trained = train_on_grid(lm.model, teacher, lm.tokenizer, config, ids, start, torch.device("cpu"),
                               progress=after_step)
    return start, trained, seen


def test_scales_first_holds_the_weights_while_the_scales_train(sharp_llama_dir):
    torch.manual_seed(0)
    lm = slmkit.load(str(sharp_llama_dir))
    ids = torch.randint(0, lm.config.vocab_size, (5, 16))
    _, _, seen = _trained_from_rtn(lm, ids, scale_steps=3)
    weights, scales = zip(*seen)
    assert len(seen) == 5 and all(torch.equal(weight, weights[0]) for weight in weights[:4])
    assert not torch.equal(weights[4], weights[3])  # the last step trains them
    assert not torch.equal(scales[3], scales[0])  # trained alone (the first step's rate is 0: warm-up)


def test_held_scales_stay_the_starts(sharp_llama_dir):
    torch.manual_seed(0)
    lm = slmkit.load(str(sharp_llama_dir))
    ids = torch.randint(0, lm.config.vocab_size, (5, 16))
    start, trained, seen = _trained_from_rtn(lm, ids, learn_scales=False)
    name = "model.layers.0.mlp.down_proj"
    assert torch.equal(trained[name][0], start.scales[name].half().float())
    assert not torch.equal(seen[-1][0], seen[0][0])


def test_edges_at_q8_0_train_with_what_the_gguf_holds(sharp_llama_dir):
    from slmkit.distillation.qat import q8_0_values

    torch.manual_seed(0)
    lm = slmkit.load(str(sharp_llama_dir))
    ids = torch.randint(0, lm.config.vocab_size, (5, 16))
    float_embedding = lm.model.get_input_embeddings().weight.detach().clone()
    _trained_from_rtn(lm, ids, edges_at_q8_0=True)
    embedding = lm.model.get_input_embeddings().weight
    assert embedding.requires_grad and not torch.equal(embedding, float_embedding)
    assert torch.equal(embedding, q8_0_values(float_embedding))
    assert torch.equal(q8_0_values(embedding), embedding)  # the export writes these values again, exactly


@pytest.mark.parametrize("model_type, change, message", [
    ("llama", {"intermediate_size": 48}, "q4_0 stores blocks of 32 weights: mlp.down_proj takes 48 inputs"),
    ("gpt2", {}, "QAT trains nn.Linear layers; attn.c_attn is a Conv1D"),
])
def test_a_model_the_grid_cannot_take_is_refused_before_sampling(tmp_path, tiny_tokenizer, monkeypatch, model_type,
                                                                   change, message):
    from transformers import AutoModelForCausalLM

    import slmkit.compress.calibration as calibration

    config = tiny_config(model_type)
    for key, value in change.items():
        setattr(config, key, value)
    path = slmkit.save(AutoModelForCausalLM.from_config(config), tmp_path / model_type, tiny_tokenizer, stage="test")
    monkeypatch.setattr(calibration, "self_generated", lambda *args, **kwargs: pytest.fail("sampled"))
    with pytest.raises(SlmError, match=message):
        slmkit.quantize(slmkit.load(str(path)), QATConfig(), slmkit.Calibration(None, samples=16, seq_len=16))


@pytest.mark.parametrize("settings, message", [
    (dict(bits=4, group_size=64, float16_scales=False), "--method qat trains on q4_0's grid: pass --target gguf-q4_0"),
    (dict(steps=0), "--steps, --batch-size and the held-out sequences must be at least 1"),
    (dict(lr=float("nan")), "--lr nan: must be a positive number"),
    (dict(start="awq"), "--start 'awq': choose one of gptq, rtn"),
    (dict(steps=10, scale_steps=10), r"scale_steps 10: must be from 0 to below steps \(10\)"),
    (dict(scale_steps=5, learn_scales=False), "scale_steps trains the scales alone first: it needs learn_scales"),
])
def test_impossible_settings_are_refused(settings, message):
    with pytest.raises(SlmError, match=message):
        QATConfig(**settings)


def test_cli_trains_and_refuses_what_cannot_work_in_one_line(tmp_path, tiny_llama_dir):
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT * 4)
    out = tmp_path / "qat"
    done = run_slm("quantize", str(tiny_llama_dir), "--method", "qat", "--target", "gguf-q4_0", "--data", str(calib),
                   "--calib-samples", "6", "--seq-len", "32", "--steps", "3", "--batch-size", "2", "--lr", "1e-3",
                   "--start", "rtn", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert '"kl_after"' in done.stdout and (out / "slmkit.json").is_file()
    for flags, message in [(["--method", "qat"], "--method qat trains on q4_0's grid: pass --target gguf-q4_0"),
                           (["--method", "qat", "--target", "gguf-q4_0", "--steps", "0"], "--steps"),
                           (["--method", "gptq", "--steps", "5"], "--steps, --lr, --batch-size and --start are QAT's")]:
        refused = run_slm("quantize", str(tiny_llama_dir), *flags, "--out", str(tmp_path / "refused"))
        assert refused.returncode != 0 and message in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert not (tmp_path / "refused").exists()


def test_a_recipe_trains_on_the_grid_and_exports_it_exactly(tmp_path, sharp_llama_dir):
    import json

    from slmkit.pipeline.recipe import parse_recipe
    from slmkit.pipeline.run import run_recipe

    data = tmp_path / "docs.txt"
    data.write_text(SAMPLE_TEXT * 8)
    recipe = parse_recipe("""
name: qat
prompts: []
stages:
  - stage: qat
    name: qat
    start: rtn
    steps: 4
    batch_size: 2
    calib_samples: 6
    calib_seq_len: 32
  - stage: export
    name: gguf
    quant: q4_0
""", "qat.yaml")
    run = run_recipe(recipe, recipe_path="qat.yaml", model=str(sharp_llama_dir), data=str(data), out=tmp_path / "run")
    state = json.loads((run / "run.json").read_text())
    trained = state["stages"]["qat"]["result"]
    assert trained["steps"] == 4 and trained["method"] == "qat" and len(trained["loss_curve"]["train"]) == 4
    assert trained["kl_after"] >= 0 and trained["calib"] == str(data)
    assert state["stages"]["gguf"]["result"]["calibrated_exact_layers"] == 7 * 2


def test_the_steps_learning_rate_and_batch_size_reach_the_trainer_as_qatconfig_declares_them(tmp_path):
    from slmkit.train.run import trainer_arguments

    args = trainer_arguments(tmp_path, QATConfig(steps=7, lr=1e-3, batch_size=3), device="cpu", dtype="float32")
    assert (args.max_steps, args.learning_rate) == (7, 1e-3)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (3, 3)
