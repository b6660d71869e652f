"""A GGUF plan end to end: `slmkit.quantize(lm, GGUFPlanConfig(size=...))` chooses a block type per matrix within
the file budget, rounds each matrix on its grid, and `slm export` writes a file no larger than the budget whose
every planned tensor holds the checkpoint's values bit for bit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_TEXT
from test_gguf_blocks import block_llama

import slmkit
from slmkit.compress.blocks import block_format
from slmkit.compress.gguf_plan import read_plan
from slmkit.compress.gguf_quantize import GGUFPlanConfig
from slmkit.errors import SlmError
from slmkit.models.checkpoint import save
from slmkit.pipeline.recipe import parse_recipe
from slmkit.pipeline.run import run_recipe
from slmkit.verbs.quantize import QuantizeSettings, parse_size

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def float_model(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("plan") / "float"
    save(block_llama(hidden=256, intermediate=512, layers=2, heads=4), out, tiny_tokenizer, stage="test")
    return out


def planned_checkpoint(float_model, out, **budget):
    lm = slmkit.load(str(float_model))
    ids = torch.tensor(lm.tokenizer(SAMPLE_TEXT * 4).input_ids[:8 * 64]).view(8, 64)
    result = slmkit.quantize(lm, GGUFPlanConfig(method="gptq", sensitivity_samples=4, **budget), ids)
    slmkit.save(lm, out, result=result)
    return lm, result


@pytest.mark.parametrize("share", [0.45, 0.7])
def test_the_exported_plan_fits_its_budget_and_keeps_the_values(float_model, tmp_path, share):
    f16_bytes = slmkit.export(slmkit.load(str(float_model)), tmp_path / "f16.gguf",
                              slmkit.GGUFConfig(quant="f16")).summary["bytes"]
    budget = int(f16_bytes * share)
    lm, result = planned_checkpoint(float_model, tmp_path / "planned", size=budget)
    written = slmkit.export(slmkit.load(str(tmp_path / "planned")), tmp_path / "planned.gguf")
    assert written.summary["quant"] == "plan"
    assert written.summary["bytes"] <= budget
    # Predicted before the checkpoint (whose name the file's metadata holds) existed.
    assert abs(written.summary["bytes"] - result.summary["file_bytes"]) <= 256
    planned, _ = read_plan(tmp_path / "planned")
    reader = gguf.GGUFReader(tmp_path / "planned.gguf")
    stored = {tensor.name: tensor for tensor in reader.tensors}
    weights = dict(lm.model.named_parameters())
    # Matrices llama.cpp stores unpermuted: the FFN and v/o projections (q/k rows are reordered for its rope).
    for name in [name for name in planned if ".mlp." in name or "v_proj" in name]:
        layer = name.split(".")[2]
        kind = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down", "v_proj": "attn_v"}[
            name.split(".")[-2]]
        tensor = stored[f"blk.{layer}.{kind}.weight"]
        assert tensor.tensor_type.name.lower() == planned[name].type.lower()
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(weights[name].shape)
        assert torch.equal(torch.from_numpy(values.copy()), weights[name].detach())


def test_a_larger_budget_buys_more_bits_and_less_predicted_divergence(float_model, tmp_path):
    sizes = [planned_checkpoint(float_model, tmp_path / f"p{share}", bpw=share)[1].summary
             for share in (3.0, 4.5, 6.5)]
    assert [summary["file_bytes"] for summary in sizes] == sorted(summary["file_bytes"] for summary in sizes)
    predicted = [summary["predicted_kl"] for summary in sizes]
    assert predicted[0] > predicted[1] > predicted[2]


def test_the_plan_settings_are_checked_before_anything_loads():
    assert parse_size("100MB") == 100_000_000 and parse_size("1.5 gb") == 1_500_000_000
    assert parse_size("512") == 512
    with pytest.raises(SlmError, match="--size 10 parsecs: give a positive number and a unit"):
        QuantizeSettings(target="gguf", size="10 parsecs").method_config()
    with pytest.raises(SlmError, match="--size, --bpw, --max-kl and --imatrix-out belong to a GGUF plan: use them with --target gguf"):
        QuantizeSettings(size="100MB")
    with pytest.raises(SlmError, match="--target gguf chooses each matrix's grid itself; drop --bits"):
        QuantizeSettings(target="gguf", bits=4, size="100MB")
    with pytest.raises(SlmError, match="a GGUF plan needs one budget"):
        QuantizeSettings(target="gguf", size="100MB", bpw=4.5).method_config()
    with pytest.raises(SlmError, match="--method awq cannot fill a GGUF plan"):
        QuantizeSettings(target="gguf", method="awq", bpw=4.5).method_config()
    assert QuantizeSettings(target="gguf", max_kl=0.01).method_config() == GGUFPlanConfig(max_kl=0.01)


def test_a_recipe_quantizes_to_a_plan_and_exports_it(float_model, tmp_path):
    """The export stage writes a planned model as its plan says, though the stage's stored default is f16."""
    recipe = parse_recipe("name: planned\nstages:\n  - stage: quantize\n    target: gguf\n    bpw: 5.0\n"
                          "    method: rtn\n    calib_samples: 4\n    calib_seq_len: 32\n  - stage: export\n",
                          "planned.yaml")
    data = tmp_path / "text.txt"
    data.write_text(SAMPLE_TEXT * 4)
    run_dir = run_recipe(recipe, recipe_path="planned.yaml", model=str(float_model), data=str(data),
                         out=tmp_path / "run")
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    quantized, exported = stages["01-quantize"]["result"], stages["02-export"]["result"]
    assert exported["quant"] == "plan" and abs(exported["bytes"] - quantized["file_bytes"]) <= 256


def test_the_imatrix_it_writes_is_what_llama_quantize_reads(float_model, tmp_path):
    imatrix = tmp_path / "imatrix.gguf"
    lm, _ = planned_checkpoint(float_model, tmp_path / "planned", bpw=5.0, imatrix_out=str(imatrix))
    reader = gguf.GGUFReader(imatrix)
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "imatrix"
    stored = {tensor.name: tensor.data.flatten() for tensor in reader.tensors}
    tokens = 4 * 64  # sensitivity_samples x sequence length
    assert stored["blk.0.ffn_down.weight.counts"].tolist() == [tokens]
    assert stored["blk.0.ffn_down.weight.in_sum2"].shape == (512,) and (stored["blk.0.ffn_down.weight.in_sum2"] > 0).all()
    assert "token_embd.weight.in_sum2" not in stored  # the embedding is looked up, not multiplied
    tool = Path(__file__).resolve().parents[1] / "benchmarks/build/llama-tools/build/bin/llama-quantize"
    if not tool.is_file():
        pytest.skip("llama-quantize not built (benchmarks/llama_tools.py)")
    f16 = tmp_path / "f16.gguf"
    slmkit.export(slmkit.load(str(float_model)), f16, slmkit.GGUFConfig(quant="f16"))
    done = subprocess.run([tool, "--imatrix", imatrix, f16, tmp_path / "q4_k_m.gguf", "Q4_K_M"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded 15 importance matrix entries" in done.stdout + done.stderr


def test_a_bad_imatrix_out_is_refused_before_anything_loads(float_model, tmp_path):
    from slmkit.verbs.quantize import check_imatrix_out

    weights = float_model / "model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(SlmError, match="which this command reads"):
        check_imatrix_out(float_model, True, reads=[float_model])
    with pytest.raises(SlmError, match="is a directory; name the .gguf file to write"):
        check_imatrix_out(tmp_path, False, reads=[float_model])
    (tmp_path / "old.gguf").write_text("x")
    with pytest.raises(SlmError, match="already exists; pass --force to replace it"):
        check_imatrix_out(tmp_path / "old.gguf", False, reads=[float_model])
    assert weights.read_bytes() == before
