import json

import pytest
import torch
from torch import nn

import slmkit
from slmkit.compress import GPTQConfig, RTNConfig, quantize
from slmkit.compress.grid import fake_quantize, group_params, quantize_codes
from slmkit.compress.quantize import QUANTIZERS
from slmkit.models.layers import block_lists, linear_layers, weight_matrix

from conftest import SAMPLE_TEXT, run_slm, tiny_model
from test_prune import correlated_inputs


def on_grid(weight, scale, zero, group):
    rows, cols = weight.shape
    codes = weight.reshape(rows, cols // group, group) / scale[:, :, None] + zero[:, :, None]
    return float((codes - codes.round()).abs().max())


@pytest.mark.parametrize("config", [RTNConfig(bits=4, group_size=16), RTNConfig(bits=8, group_size=0),
                                    GPTQConfig(bits=4, group_size=16), GPTQConfig(bits=4, group_size=8, act_order=True),
                                    GPTQConfig(bits=4, group_size=16, symmetric=False),
                                    slmkit.compress.AWQConfig(bits=4, group_size=16)],
                         ids=lambda c: f"{c.method}-w{c.bits}g{c.group_size}{'' if c.symmetric else 'a'}")
def test_quantized_weights_lie_on_their_grid(config):
    model = tiny_model("llama")
    calibration = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    metrics, params = quantize(model, config, calibration)
    low, high = (-(2 ** (config.bits - 1)), 2 ** (config.bits - 1) - 1) if config.symmetric else (0, 2**config.bits - 1)
    for stack, blocks in block_lists(model):
        for index, block in enumerate(blocks):
            for name, layer in linear_layers(block).items():
                weight = weight_matrix(layer)
                scale, zero = params[f"{stack}.{index}.{name}"]
                group = config.group_size or weight.shape[1]
                assert on_grid(weight, scale, zero, group) < 1e-3
                codes = (weight.reshape(weight.shape[0], -1, group) / scale[:, :, None] + zero[:, :, None]).round()
                assert codes.min() >= low and codes.max() <= high
                assert metrics[f"{stack}.{index}.{name}"]["weight_mse"] > 0


def test_symmetric_grid_uses_all_levels_and_keeps_zeros():
    weight = torch.tensor([[0.0, 0.5, -1.0, 0.25], [0.0, 2.0, -0.5, 1.0]])
    scale, zero = group_params(weight, 4, True)
    codes = quantize_codes(weight, scale, zero, 4, True)
    # the signed extreme lands on the lowest level, whatever its sign
    assert codes.tolist() == [[0, 4, -8, 2], [0, -8, 2, -4]]
    dequantized = fake_quantize(weight, scale, zero, 4, True)
    assert dequantized[:, 0].tolist() == [0.0, 0.0]
    torch.testing.assert_close(dequantized[0, 2], torch.tensor(-1.0))


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_mse_observer_never_loses_to_minmax(symmetric):
    torch.manual_seed(0)
    weight = torch.randn(64, 32)  # Gaussian tails: clipping the extremes pays off on most rows
    importance = torch.rand(32) + 0.5
    errors = {}
    for observer in ("minmax", "mse"):
        scale, zero = group_params(weight, 4, symmetric, True, observer, importance)
        assert torch.equal(scale, scale.half().float())  # still a float16 scale (GGUF blocks)
        error = (fake_quantize(weight, scale, zero, 4, symmetric) - weight).pow(2) * importance
        errors[observer] = error.sum(dim=1)
    assert bool((errors["mse"] <= errors["minmax"] + 1e-6).all())
    assert float(errors["mse"].sum()) < 0.95 * float(errors["minmax"].sum())


def test_gptq_beats_rtn_on_layer_output_error():
    inputs = correlated_inputs(tokens=1024, width=128)
    torch.manual_seed(1)
    layer = nn.Linear(128, 64, bias=False)
    nn.init.normal_(layer.weight)
    reference = layer(inputs).detach()
    errors = {}
    for label, config in [("rtn", RTNConfig(bits=4, group_size=32)), ("gptq", GPTQConfig(bits=4, group_size=32)),
                          ("gptq-act", GPTQConfig(bits=4, group_size=32, act_order=True)),
                          ("gptq-minmax", GPTQConfig(bits=4, group_size=32, observer="minmax"))]:
        trial = nn.Linear(128, 64, bias=False)
        trial.weight.data.copy_(layer.weight.data)
        quantizer = QUANTIZERS[type(config)](config)
        quantizer.observe("layer", trial, inputs)
        quantizer.apply("layer", trial)
        with torch.no_grad():
            errors[label] = float((trial(inputs) - reference).pow(2).mean())
    assert errors["gptq"] < errors["rtn"] and errors["gptq-act"] < errors["rtn"]
    assert errors["gptq"] < errors["gptq-minmax"] < errors["rtn"]  # the default observer is mse


def test_quantize_respects_pruned_zeros():
    model = tiny_model("llama")
    slmkit.prune(model, slmkit.compress.MagnitudeConfig(sparsity=0.5))
    zeros_before = {n: weight_matrix(l) == 0 for n, l in linear_layers(model.model.layers[0]).items()}
    calibration = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    quantize(model, GPTQConfig(bits=4, group_size=16), calibration)
    for name, layer in linear_layers(model.model.layers[0]).items():
        assert bool((weight_matrix(layer)[zeros_before[name]] == 0).all())


@pytest.mark.parametrize("kwargs, message", [({"bits": 3}, "--bits"), ({"bits": 16}, "--bits"),
                                             ({"group_size": -1}, "--group-size"),
                                             ({"observer": "percentile"}, "--observer")])
def test_bad_quant_config(kwargs, message):
    with pytest.raises(slmkit.SlmError, match=message):
        GPTQConfig(**kwargs)


def test_group_size_must_divide_width():
    with pytest.raises(slmkit.SlmError, match="does not divide the input width 32"):
        quantize(tiny_model("llama"), RTNConfig(bits=4, group_size=24))


def test_compressed_tensors_checkpoint_reloads_in_plain_transformers(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT)
    fake, packed = tmp_path / "fake", tmp_path / "packed"
    common = [str(tiny_llama_dir), "--method", "gptq", "--bits", "4", "--group-size", "16", "--calib", str(text),
              "--calib-samples", "4", "--calib-seq-len", "32", "--json"]
    assert run_slm("quantize", *common, "--out", str(fake), "--fake-quant").returncode == 0
    result = run_slm("quantize", *common, "--out", str(packed))
    assert result.returncode == 0, result.stderr
    config = json.loads((packed / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["config_groups"]["group_0"]["weights"]["group_size"] == 16
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(fake)(ids).logits
        reloaded = AutoModelForCausalLM.from_pretrained(packed)(ids).logits
        through_slmkit = slmkit.load(str(packed)).model(ids).logits
    torch.testing.assert_close(reloaded, reference)
    torch.testing.assert_close(through_slmkit, reference)
    packed_size = sum(f.stat().st_size for f in packed.glob("*.safetensors"))
    assert packed_size < sum(f.stat().st_size for f in fake.glob("*.safetensors"))
    manifest = json.loads((packed / "slmkit.json").read_text())
    assert manifest["stage"] == "quantize" and manifest["config"]["format"] == "compressed-tensors"


def test_cli_quantize_bad_input(tiny_llama_dir, tmp_path):
    for args, message in [(["--bits", "3"], "--bits"), (["--group-size", "48"], "does not divide"),
                          (["--method", "awq2"], "unknown --method"), (["--asym"], "--asym")]:
        result = run_slm("quantize", str(tiny_llama_dir), "--method", "rtn", *args, "--out", str(tmp_path / "q"))
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "q").exists()


def test_awq_scale_folding_keeps_the_float_model_exact():
    from slmkit.compress.awq import AWQConfig, AWQQuantizer
    from slmkit.compress.runner import run_sequential

    model = tiny_model("llama")
    norm = torch.ones(32)
    norm[:3] = 25.0  # outlier input channels: AWQ then picks scales far from 1
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.copy_(norm)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits

    class FoldOnly(AWQQuantizer):
        def apply(self, name, module):
            self.inputs.pop(name)
            return {}

    quantizer = FoldOnly(AWQConfig(bits=4, group_size=16))
    quantizer.bind(model)
    run_sequential(model, quantizer, ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(model.model.layers[0].input_layernorm.weight, norm)


def test_awq_beats_rtn_with_outlier_channels():
    """AWQ's premise: a few input channels with large activations matter most."""
    from slmkit.compress.awq import AWQConfig

    model = tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            weight = torch.ones(32)
            weight[:3] = 25.0  # three outlier channels feed q/k/v
            layer.input_layernorm.weight.copy_(weight)
    ids = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
    errors = {}
    for config in (RTNConfig(bits=4, group_size=16), AWQConfig(bits=4, group_size=16)):
        trial = tiny_model("llama")
        trial.load_state_dict(model.state_dict())
        quantize(trial, config, ids)
        with torch.no_grad():
            errors[config.method] = float((trial(ids).logits - reference).pow(2).mean())
    assert errors["awq"] < errors["rtn"]


def test_awq_refuses_families_it_cannot_fold():
    from slmkit.compress.awq import AWQConfig

    with pytest.raises(slmkit.SlmError, match="AWQ supports"):
        quantize(tiny_model("gpt2"), AWQConfig(bits=4, group_size=16), torch.randint(0, 300, (2, 8)))
