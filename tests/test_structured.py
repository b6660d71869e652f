import copy
import json

import pytest
import torch

import slmkit
from slmkit.compress.structured import StructuredConfig, prune_structured

from conftest import SAMPLE_TEXT, run_slm, tiny_config, tiny_model


def masked_reference(model, report, head_dim=8):
    """The original model with pruned channels/heads zeroed and removed blocks skipped."""
    reference = copy.deepcopy(model)
    layers = reference.model.layers
    with torch.no_grad():
        for index, layer in enumerate(layers):
            if report["kept_ffn_channels"]:
                drop = torch.ones(layer.mlp.down_proj.in_features, dtype=torch.bool)
                drop[report["kept_ffn_channels"][index]] = False
                layer.mlp.down_proj.weight[:, drop] = 0
            if report["kept_heads"]:
                drop = torch.ones(layer.self_attn.o_proj.in_features, dtype=torch.bool)
                for head in report["kept_heads"][index]:
                    drop[head * head_dim:(head + 1) * head_dim] = False
                layer.self_attn.o_proj.weight[:, drop] = 0  # a head with no output path is gone
    for index in report["removed_blocks"]:
        layers[index].register_forward_hook(lambda module, args, output: args[0])
    return reference


@pytest.mark.parametrize("config", [StructuredConfig(depth=1), StructuredConfig(ffn=24),
                                    StructuredConfig(heads=2), StructuredConfig(depth=1, ffn=40, heads=2)],
                         ids=["depth", "ffn", "heads", "all"])
def test_smaller_model_matches_masked_reference(config, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    calibration = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    original = copy.deepcopy(model)
    report = prune_structured(model, config, calibration)
    out = slmkit.save(model, tmp_path / "small", tiny_tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no slmkit code
    reference = masked_reference(original, report)
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)
    assert reloaded.config.num_hidden_layers == 2 - config.depth
    assert reloaded.config.intermediate_size == (config.ffn or 64)
    assert reloaded.config.num_attention_heads == (config.heads or 4)
    assert reloaded.config.num_key_value_heads == 2  # GQA: key/value heads stay, groups stay equal
    assert sum(p.numel() for p in reloaded.parameters()) == report["parameters"] < 37792


def test_depth_removes_the_least_influential_block():
    model = tiny_model("llama")
    with torch.no_grad():  # block 0 barely changes its input: its residual branches are almost zero
        for parameter in (model.model.layers[0].self_attn.o_proj.weight, model.model.layers[0].mlp.down_proj.weight):
            parameter.mul_(1e-4)
    report = prune_structured(model, StructuredConfig(depth=1), torch.randint(0, 300, (2, 16)))
    assert report["removed_blocks"] == [0]
    assert report["block_influence"][0] < report["block_influence"][1]


def test_target_params_is_met():
    model = tiny_model("llama")
    report = prune_structured(model, StructuredConfig(target_params=30000), torch.randint(0, 300, (2, 16)))
    assert report["parameters"] <= 30000 and report["parameters"] > 24000


def test_target_params_keeps_whole_32_column_blocks_of_the_ffn():
    from transformers import LlamaForCausalLM

    config = tiny_config("llama")
    config.intermediate_size = 256
    model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    per_channel = 3 * config.hidden_size * config.num_hidden_layers  # gate, up and down rows/columns
    target = total - 50 * per_channel  # 206 channels would meet it exactly
    report = prune_structured(model, StructuredConfig(target_params=target), torch.randint(0, 300, (2, 16)))
    # GGUF's q4_0/q8_0 blocks and GPTQ groups of 32 need whole blocks: rounded down, still under the target.
    assert report["ffn"] == 192 and report["parameters"] <= target


@pytest.mark.parametrize("kwargs, message", [
    ({"heads": 3}, "multiple of the 2 key/value heads"), ({"ffn": 64}, "below the current 64"),
    ({"depth": 2}, "remove all 2 blocks"), ({"target_params": 10**9}, "not below")])
def test_structured_bad_input(kwargs, message):
    with pytest.raises(slmkit.SlmError, match=message):
        prune_structured(tiny_model("llama"), StructuredConfig(**kwargs), torch.randint(0, 300, (2, 16)))


def test_width_refused_for_unsupported_family():
    with pytest.raises(slmkit.SlmError, match="width pruning supports"):
        prune_structured(tiny_model("gpt2"), StructuredConfig(ffn=16), torch.randint(0, 300, (2, 16)))
    report = prune_structured(tiny_model("gpt2"), StructuredConfig(depth=1), torch.randint(0, 300, (2, 16)))
    assert report["removed_blocks"]


def test_cli_structured(tiny_llama_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT)
    out = tmp_path / "narrow"
    result = run_slm("prune", str(tiny_llama_dir), "--structured", "--width", "ffn=32,heads=2", "--calib", str(text),
                     "--calib-samples", "4", "--calib-seq-len", "32", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["parameters_after"] < summary["parameters_before"]
    config = json.loads((out / "config.json").read_text())
    assert (config["intermediate_size"], config["num_attention_heads"], config["head_dim"]) == (32, 2, 8)
    assert json.loads((out / "slmkit.json").read_text())["stage"] == "structured"
    bad = run_slm("prune", str(tiny_llama_dir), "--structured", "--width", "layers=3", "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "--width" in bad.stderr and not (tmp_path / "x").exists()
