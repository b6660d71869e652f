import json

import pytest
import torch
from torch import nn

import slmkit
from slmkit.compress import MagnitudeConfig, SparseGPTConfig, WandaConfig, calibration_ids, prune
from slmkit.models.layers import block_lists, linear_layers, weight_matrix
from slmkit.compress.prune import PRUNERS, MagnitudePruner, n_m_mask, sparsegpt_prune
from slmkit.compress.runner import run_sequential

from conftest import SAMPLE_TEXT, run_slm, tiny_model

CONFIGS = [MagnitudeConfig(sparsity=0.5), WandaConfig(sparsity=0.5), SparseGPTConfig(sparsity=0.5),
           MagnitudeConfig(sparsity=0.25), WandaConfig(pattern="2:4"), SparseGPTConfig(pattern="2:4"),
           SparseGPTConfig(pattern="1:4")]


def calibration():
    return torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.method}-{c.sparsity or c.pattern}")
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_exact_sparsity_in_every_matrix(family, config):
    model = tiny_model(family)
    embedding_before = model.get_input_embeddings().weight.clone()
    metrics = prune(model, config, calibration())
    for _, blocks in block_lists(model):
        for block in blocks:
            for layer in linear_layers(block).values():
                weight = weight_matrix(layer)
                if config.pattern:
                    keep, group = config.n_m
                    nonzero = (weight.reshape(weight.shape[0], -1, group) != 0).sum(-1)
                    assert int(nonzero.max()) <= keep
                    assert int((weight == 0).sum()) == weight.numel() * (group - keep) // group
                else:
                    assert int((weight == 0).sum()) == round(weight.numel() * config.sparsity)
    assert all(m["sparsity"] == (config.sparsity or 1 - config.n_m[0] / config.n_m[1]) for m in metrics.values())
    torch.testing.assert_close(model.get_input_embeddings().weight, embedding_before)


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2", "bert", "phi"])
def test_runner_feeds_each_block_what_the_model_does(family):
    """With a method that changes nothing, observed inputs equal a plain forward pass's (gemma3: mixed attention)."""
    model = tiny_model(family)
    ids = calibration()
    expected = {}

    def record(key):
        def hook(module, inputs, output):
            expected[key] = inputs[0].reshape(-1, inputs[0].shape[-1])
        return hook

    handles = [layer.register_forward_hook(record(f"{stack}.{i}.{name}"))
               for stack, blocks in block_lists(model)
               for i, block in enumerate(blocks) for name, layer in linear_layers(block).items()]
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()

    class Recorder:
        needs_calibration = True
        seen = {}

        def observe(self, name, module, inputs):
            self.seen[name] = inputs.clone()

        def apply(self, name, module):
            return {}

    recorder = Recorder()
    run_sequential(model, recorder, ids, batch_size=len(ids))
    assert set(recorder.seen) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(recorder.seen[key], value, rtol=1e-4, atol=1e-5)


def correlated_inputs(tokens=512, width=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator)
    scales = torch.logspace(-1, 1, width)[None, :]
    return (torch.randn(tokens, width, generator=generator) @ mixing) * scales


def test_sparsegpt_and_wanda_beat_magnitude_on_output_error():
    inputs = correlated_inputs()
    layer = nn.Linear(64, 32, bias=False)
    torch.manual_seed(1)
    nn.init.normal_(layer.weight)
    reference = layer(inputs).detach()
    errors = {}
    for config in (MagnitudeConfig(sparsity=0.5), WandaConfig(sparsity=0.5), SparseGPTConfig(sparsity=0.5)):
        trial = nn.Linear(64, 32, bias=False)
        trial.weight.data.copy_(layer.weight.data)
        pruner = PRUNERS[type(config)](config)
        pruner.observe("layer", trial, inputs)
        pruner.apply("layer", trial)
        with torch.no_grad():
            errors[config.method] = float((trial(inputs) - reference).pow(2).mean())
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]


def test_n_m_mask_drops_the_smallest_in_each_group():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 0.9, 0.7]])
    assert n_m_mask(scores, 2, 4).tolist() == [[False, True, False, True, True, True, False, False]]


def test_sparsegpt_with_identity_hessian_is_magnitude():
    """With uncorrelated, equal-scale inputs the OBS update changes nothing: pruning is by |W|."""
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    pruned = sparsegpt_prune(weight.clone(), torch.eye(16), SparseGPTConfig(sparsity=0.5, damp=0.0))
    kept = pruned != 0
    torch.testing.assert_close(pruned[kept], weight[kept])
    assert float(weight[kept].abs().min()) >= float(weight[~kept].abs().max())


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 1.0}, "between 0 and 1"), ({"sparsity": 0}, "between 0 and 1"),
    ({"pattern": "4:4"}, "0 < N < M"), ({"pattern": "two:four"}, "look like 2:4"),
    ({}, "exactly one"), ({"sparsity": 0.5, "pattern": "2:4"}, "exactly one")])
def test_impossible_sparsity(kwargs, message):
    with pytest.raises(slmkit.SlmError, match=message):
        WandaConfig(**kwargs)


def test_n_m_needs_divisible_width():
    layer = nn.Linear(6, 4)
    pruner = MagnitudePruner(MagnitudeConfig(pattern="2:4"))
    with pytest.raises(slmkit.SlmError, match="multiple of M"):
        pruner.apply("layer", layer)


def test_calibration_windows(tiny_llama_dir, tmp_path):
    lm = slmkit.load(str(tiny_llama_dir))
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT)
    ids = calibration_ids(lm, text, samples=4, seq_len=32, seed=0)
    assert ids.shape == (4, 32)
    assert torch.equal(ids, calibration_ids(lm, text, samples=4, seq_len=32, seed=0))
    stream = lm.tokenizer(SAMPLE_TEXT).input_ids
    starts = {i for i in range(len(stream) - 31) for row in ids.tolist() if stream[i:i + 32] == row}
    assert len(starts) == 4 and all(start % 32 == 0 for start in starts)
    with pytest.raises(slmkit.SlmError, match="too short"):
        calibration_ids(lm, text, samples=1000, seq_len=32)
    generated = calibration_ids(lm, None, samples=2, seq_len=12)
    assert generated.shape == (2, 12)
    assert torch.equal(generated, calibration_ids(lm, None, samples=2, seq_len=12))
    assert not torch.equal(generated, calibration_ids(lm, None, samples=2, seq_len=12, seed=1))


def test_cli_prune_writes_a_checkpoint_transformers_loads(tiny_llama_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT)
    out = tmp_path / "pruned"
    result = run_slm("prune", str(tiny_llama_dir), "--method", "sparsegpt", "--pattern", "2:4", "--calib",
                     str(text), "--calib-samples", "4", "--calib-seq-len", "32", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["measured_sparsity"] == 0.5
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert float((model.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == 0.5
    manifest = json.loads((out / "slmkit.json").read_text())
    assert manifest["stage"] == "prune" and manifest["config"]["pattern"] == "2:4"
    assert all(layer["sparsity"] == 0.5 for layer in manifest["metrics"]["layers"].values())
    again = run_slm("prune", str(tiny_llama_dir), "--method", "magnitude", "--sparsity", "0.5", "--out", str(out))
    assert again.returncode != 0 and "not empty" in again.stderr
    bad = run_slm("prune", str(tiny_llama_dir), "--method", "obs", "--sparsity", "0.5", "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "unknown --method" in bad.stderr and not (tmp_path / "x").exists()


def test_needs_calibration_follows_the_method():
    from slmkit.compress import AWQConfig, GPTQConfig, RTNConfig, needs_calibration

    assert not needs_calibration(MagnitudeConfig(sparsity=0.5)) and not needs_calibration(RTNConfig(bits=4))
    assert all(needs_calibration(config) for config in (WandaConfig(sparsity=0.5), SparseGPTConfig(pattern="2:4"),
                                                         GPTQConfig(bits=4), AWQConfig(bits=4)))
