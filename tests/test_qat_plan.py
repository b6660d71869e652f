"""QAT on a GGUF plan's grids: every block type trains on values its blocks hold (the forward is what gguf-py
reads back), a trained mixed plan exports bit for bit with a lower held-out KL than its start, the CLI and the
recipe ask for it, and what QAT cannot train is refused in one line before any text is read or sampled."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from conftest import SAMPLE_TEXT, assert_plan_written_exactly, run_slm, tiny_config

import slmkit
from slmkit.compress.block_grid import BlockParams
from slmkit.compress.blocks import FORMATS, block_format
from slmkit.compress.gguf_plan import PlannedTensor, exact_codes, read_plan, read_plan_summary, write_plan
from slmkit.compress.grid_training import TrainableGrid
from slmkit.distillation.plan_qat import PlanGrids, PlanQATConfig
from slmkit.distillation.qat import grid_weight
from slmkit.errors import SlmError
from slmkit.models.checkpoint import save
from slmkit.models.layers import weight_matrix
from slmkit.verbs.quantize import QuantizeSettings

# Every block type on at least one matrix of a 2-layer model; the output head left out (written in f16).
MIXED_TYPES = ["iq4_nl", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]


def causal_lm(model_type: str, **changes):
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def rounded_by_hand(model, types: dict[str, str]) -> tuple[dict[str, PlannedTensor], dict[str, BlockParams]]:
    """Each named matrix fitted and rounded on its type's grid in place, as `slm quantize --target gguf` leaves it
    (RTN); the plan and its block parameters."""
    parameters, params = dict(model.named_parameters()), {}
    with torch.no_grad():
        for name, type_name in types.items():
            block, holder = block_format(type_name), model.get_submodule(name.rpartition(".")[0])
            matrix = weight_matrix(holder)
            params[name] = block.fit(matrix)
            values = block.round_columns(matrix, params[name], 0)[0]
            parameters[name].copy_(values.t() if type(holder).__name__ == "Conv1D" else values)
    return {name: PlannedTensor(type_name, 0, 0.0) for name, type_name in types.items()}, params


def save_planned(model, out, tokenizer, types: dict[str, str], parent) -> None:
    plan, params = rounded_by_hand(model, types)
    save(model, out, tokenizer, stage="quantize", parent=None if parent is None else str(parent),
         after_write=lambda tmp: write_plan(tmp, plan, params, {"predicted_kl": 0.5}))


def text_ids(tokenizer, sequences: int, length: int) -> torch.Tensor:
    return torch.tensor(tokenizer(SAMPLE_TEXT * 8).input_ids[:sequences * length]).view(sequences, length)


@pytest.mark.parametrize("type_name", list(FORMATS))
def test_every_type_trains_on_the_values_its_blocks_hold(type_name):
    torch.manual_seed(0)
    block = block_format(type_name)
    weight = torch.randn(8, 512) * 0.05
    start_params = block.fit(weight)
    start = block.round_columns(weight, start_params, 0)[0]
    grid = TrainableGrid(type_name, start_params)
    assert torch.equal(grid(start), start)  # it starts on the plan's values exactly
    with torch.no_grad():  # as if trained: every parameter and the latent weight moved
        for parameter in grid.parameters():
            parameter.mul_(1 + 0.05 * torch.randn_like(parameter))
    latent = (start + 0.01 * torch.randn_like(start)).requires_grad_()
    values = grid(latent)
    snapped, stored = grid.snapped(latent)
    assert torch.equal(values, snapped)
    codes = block.round_columns(latent.detach(), stored, 0)[1]
    kind = gguf.GGMLQuantizationType[type_name.upper()]
    read_back = gguf.quants.dequantize(block.pack(codes, stored), kind).reshape(values.shape)
    np.testing.assert_array_equal(read_back, values.detach().numpy())  # what the file holds, bit for bit
    assert not all(torch.equal(getattr(stored, name), getattr(start_params, name)) for name in ("d", "scales")
                   if getattr(stored, name) is not None)
    (values * torch.randn_like(values)).sum().backward()
    assert latent.grad.abs().sum() > 0
    for name, parameter in grid.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_q4_0_trains_as_qat_on_q4_0s_grid_does():
    torch.manual_seed(0)
    weight = torch.randn(16, 96) * 0.05
    scale = (weight.reshape(16, 3, 32).abs().amax(-1) / 8 * 0.8).half().float()
    grid = TrainableGrid("q4_0", BlockParams(d=scale.half()))
    upstream = torch.randn(16, 96)
    general, q4_0 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    q4_0_scale = scale.clone().requires_grad_()
    (grid(general) * upstream).sum().backward()
    (grid_weight(q4_0, q4_0_scale) * upstream).sum().backward()
    assert torch.equal(grid(general), grid_weight(q4_0, q4_0_scale))
    assert torch.equal(general.grad, q4_0.grad) and torch.equal(grid.step.grad, q4_0_scale.grad)


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer llama with rows k-quants tile (256) and weights large enough for low bits to matter."""
    model = causal_lm("llama", hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64, initializer_range=0.05)
    return slmkit.save(model, tmp_path_factory.mktemp("plan-qat") / "float", tiny_tokenizer, stage="test")


@pytest.fixture(scope="module")
def trained(float_dir, tmp_path_factory, tiny_tokenizer):
    """QAT on a checkpoint's own plan of every block type: (the trained checkpoint, the result, the types, the
    start's block parameters)."""
    lm = slmkit.load(str(float_dir))
    names = ["model.embed_tokens.weight"] + [name for name, _ in lm.model.named_parameters()
                                             if ".layers." in name and name.endswith("proj.weight")]
    types = {name: MIXED_TYPES[index % len(MIXED_TYPES)] for index, name in enumerate(names)}
    planned = tmp_path_factory.mktemp("plan-qat") / "planned"
    save_planned(lm.model, planned, tiny_tokenizer, types, parent=float_dir)
    start = read_plan(planned)[1]
    lm = slmkit.load(str(planned))
    result = slmkit.quantize(lm, PlanQATConfig(steps=16, batch_size=4, held_out=2, device="cpu"),
                             text_ids(tiny_tokenizer, 34, 32))
    out = slmkit.save(lm, tmp_path_factory.mktemp("plan-qat") / "trained", result=result)
    return out, result, types, start


def test_qat_on_a_mixed_plan_lowers_the_held_out_kl_and_the_plan_records_it(trained):
    out, result, types, start = trained
    assert result.metrics["kl_after"] < 0.9 * result.metrics["kl_before"]  # 0.73 when measured
    assert result.summary["start"] == "checkpoint plan" and result.summary["steps"] == 16
    summary = read_plan_summary(out)
    assert summary["predicted_kl"] == 0.5  # the plan's prediction, kept beside what QAT measured
    assert (summary["kl_before_qat"], summary["kl_after_qat"]) == (result.metrics["kl_before"],
                                                                   result.metrics["kl_after"])
    planned, params = read_plan(out)
    assert {name: tensor.type for name, tensor in planned.items()} == types
    # training changed the grids, not only the codes: the k-quants' sub-block scales, the 32-value types' d
    assert not torch.equal(params["model.layers.0.self_attn.q_proj.weight"].scales,
                           start["model.layers.0.self_attn.q_proj.weight"].scales)
    assert not torch.equal(params["model.layers.0.mlp.gate_proj.weight"].d,
                           start["model.layers.0.mlp.gate_proj.weight"].d)


def test_the_trained_plan_exports_every_tensor_bit_for_bit(trained, tmp_path):
    out, _, types, _ = trained
    lm = slmkit.load(str(out))
    report = slmkit.export(lm, tmp_path / "trained.gguf").summary
    assert report["quant"] == "plan" and report["calibrated_exact_layers"] == len(types)
    assert_plan_written_exactly(lm, tmp_path / "trained.gguf", types)


@pytest.mark.parametrize("model_type, types", [
    ("llama", {"model.embed_tokens.weight": "q4_1", "model.layers.0.self_attn.q_proj.weight": "q5_0"}),
    ("gpt2", {"transformer.wte.weight": "q8_0", "transformer.h.0.attn.c_attn.weight": "iq4_nl"}),
])
def test_a_tied_head_reads_its_embeddings_grid_and_conv1d_trains_transposed(model_type, types):
    model = causal_lm(model_type, tie_word_embeddings=True)
    plan, params = rounded_by_hand(model, types)
    grids = PlanGrids(plan, params)
    latent, scales = grids.install(model, PlanQATConfig(device="cpu"))
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert embedding.parametrizations.weight.original is head.parametrizations.weight.original
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(weight.grad.abs().sum() > 0 for weight in latent) and all(scale.grad is not None for scale in scales)
    with torch.no_grad():
        for weight in latent:
            weight.add_(0.01 * torch.randn_like(weight))
    trained = grids.snap(model)
    assert head.weight is embedding.weight and not hasattr(embedding, "parametrizations")
    for name, type_name in types.items():
        holder = model.get_submodule(name.rpartition(".")[0])
        assert exact_codes(weight_matrix(holder), type_name, trained[name]) is not None, name


def test_the_cli_plans_then_trains_and_the_export_is_exact(tmp_path, tiny_tokenizer):
    float_dir = slmkit.save(causal_lm("llama", tie_word_embeddings=True, initializer_range=0.2), tmp_path / "float",
                            tiny_tokenizer, stage="test")
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT * 4)
    done = run_slm("quantize", str(float_dir), "--method", "qat", "--target", "gguf", "--max-kl", "0.5", "--data",
                   str(calib), "--calib-samples", "6", "--seq-len", "16", "--steps", "2", "--batch-size", "2",
                   "--start", "rtn", "--out", str(tmp_path / "qat"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["method"] == "qat" and summary["start"] == "rtn" and summary["steps"] == 2
    assert {"predicted_kl", "kl_before_qat", "kl_after_qat"} <= set(read_plan_summary(tmp_path / "qat"))
    written = slmkit.export(slmkit.load(str(tmp_path / "qat")), tmp_path / "qat.gguf").summary
    assert written["calibrated_exact_layers"] == summary["quantized_layers"]
    # no budget: the checkpoint's own plan, which the float model has not; refused before it loads
    refused = run_slm("quantize", str(float_dir), "--method", "qat", "--target", "gguf", "--out",
                      str(tmp_path / "refused"))
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "has no GGUF plan (gguf-plan.json) to train: give a budget" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_a_qat_stage_trains_the_plan_a_quantize_stage_made(tmp_path, tiny_llama_dir):
    from slmkit.pipeline.recipe import parse_recipe
    from slmkit.pipeline.run import run_recipe

    data = tmp_path / "docs.txt"
    data.write_text(SAMPLE_TEXT * 8)
    recipe = parse_recipe("""
name: planned-qat
stages:
  - stage: quantize
    name: plan
    method: rtn
    target: gguf
    max_kl: 0.5
    calib_samples: 6
    calib_seq_len: 16
  - stage: qat
    name: qat
    steps: 2
    batch_size: 2
    calib_samples: 6
    calib_seq_len: 16
  - stage: export
    name: gguf
""", "planned-qat.yaml")
    run = run_recipe(recipe, recipe_path="planned-qat.yaml", model=str(tiny_llama_dir), data=str(data),
                     out=tmp_path / "run")
    stages = json.loads((run / "run.json").read_text())["stages"]
    planned, trained, exported = (stages[name]["result"] for name in ("plan", "qat", "gguf"))
    assert trained["start"] == "checkpoint plan" and len(trained["loss_curve"]["train"]) == 2
    assert trained["predicted_kl"] == planned["predicted_kl"] and trained["kl_after"] >= 0
    assert exported["quant"] == "plan" and exported["calibrated_exact_layers"] == planned["quantized_layers"]


@pytest.mark.parametrize("settings, message", [
    (dict(start="awq", bpw=4.0), "--start 'awq': choose one of gptq, rtn"),
    (dict(start="rtn"), "--method qat --target gguf without --size, --bpw or --max-kl trains the checkpoint's own "
                        "plan; --start and --imatrix-out make a new one: give its budget"),
    (dict(bpw=4.0, calib_samples=1), "QAT holds 1 of its 1 sequences out"),
])
def test_plan_qat_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(SlmError, match=message):
        QuantizeSettings(method="qat", target="gguf", **settings).method_config()


@pytest.fixture
def tiny_planned(tmp_path, tiny_llama_dir, tiny_tokenizer):
    """A tiny llama's checkpoint with a plan of its blocks' matrices, planned from tiny_llama_dir."""
    model = slmkit.load(str(tiny_llama_dir)).model
    types = {name: "q4_0" for name, _ in model.named_parameters() if name.endswith("proj.weight")}
    save_planned(model, tmp_path / "planned", tiny_tokenizer, types, parent=tiny_llama_dir)
    return tmp_path / "planned", types


def _no_parent(directory):
    manifest = directory / "slmkit.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "parent": None}))


def _gone_parent(directory):
    manifest = directory / "slmkit.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "parent": str(directory / "gone")}))


def _foreign_tensor(directory):
    """The plan (both files) names a matrix this model lacks."""
    from safetensors.torch import load_file, save_file

    plan = directory / "gguf-plan.json"
    record = json.loads(plan.read_text())
    record["tensors"]["model.layers.9.mlp.up_proj.weight"] = record["tensors"]["model.layers.0.mlp.up_proj.weight"]
    plan.write_text(json.dumps(record))
    params = load_file(directory / "gguf-blocks.safetensors")
    params["model.layers.9.mlp.up_proj.weight.d"] = params["model.layers.0.mlp.up_proj.weight.d"].clone()
    save_file(params, directory / "gguf-blocks.safetensors")


@pytest.mark.parametrize("change, message", [
    (None, "has no GGUF plan \\(gguf-plan.json\\) to train: give a budget"),
    (_no_parent, "QAT trains its GGUF plan against the model it was planned from, and its slmkit.json names none"),
    (_gone_parent, "QAT trains its GGUF plan against .*gone, the model it was planned from, which cannot be opened"),
    (_foreign_tensor, "the GGUF plan names model.layers.9.mlp.up_proj.weight, which is no module's weight"),
    ("changed weight", "model.layers.0.mlp.up_proj.weight is no longer on the q4_0 grid its GGUF plan rounded it to"),
])
def test_a_plan_qat_cannot_train_is_refused_before_sampling(tiny_planned, tiny_llama_dir, monkeypatch, change,
                                                              message):
    import slmkit.compress.calibration as calibration

    directory, _ = tiny_planned
    if callable(change):
        change(directory)
    lm = slmkit.load(str(tiny_llama_dir if change is None else directory))
    if change == "changed weight":
        with torch.no_grad():
            lm.model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    monkeypatch.setattr(calibration, "self_generated", lambda *args, **kwargs: pytest.fail("sampled"))
    with pytest.raises(SlmError, match=message):
        slmkit.quantize(lm, PlanQATConfig(device="cpu"), slmkit.Calibration(None, samples=8, seq_len=16))


def test_a_qat_stage_refuses_a_budget_for_a_planned_model(tiny_planned, tmp_path):
    from contextlib import nullcontext

    from slmkit.pipeline.registry import RunModel, StageContext
    from slmkit.pipeline.stages.quantize import QATStage, run_qat

    directory, _ = tiny_planned
    context = StageContext(out=tmp_path / "qat", models=[RunModel("plan", str(directory), "quantize")], data=None,
                           progress=lambda *args, **kwargs: nullcontext(lambda done, total: None))
    with pytest.raises(SlmError, match="has a GGUF plan, which the qat stage trains as it is: drop max_kl"):
        run_qat(QATStage(stage="qat", target="gguf", max_kl=0.02), context)
    assert not (tmp_path / "qat").exists()
