"""GGUF export at llama.cpp's block types: a planned checkpoint keeps every matrix at its own type bit for bit, the
file's size is known before it is written, and a k-quant falls back where llama.cpp's does."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import SAMPLE_TEXT, assert_plan_written_exactly, run_slm, tiny_config

from slmkit import load
from slmkit.compress.blocks import FORMATS, block_format
from slmkit.compress.gguf_plan import PlannedTensor, write_plan
from slmkit.errors import SlmError
from slmkit.exporters.config import GGUF_QUANTS
from slmkit.exporters.gguf import K_QUANT_FALLBACK, export_gguf, gguf_file_size
from slmkit.models.checkpoint import save

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

# Each block type on at least one matrix; the FFN's q4_K holds most weights (the file type's type).
ATTENTION_TYPES = ("q6_K", "q2_K", "q3_K", "q5_K", "q4_0", "q4_1", "q5_0", "q5_1")
FFN_TYPES = {"gate_proj": "q4_K", "up_proj": "q4_K", "down_proj": "q4_K"}


def block_llama(hidden: int, intermediate: int, layers: int, heads: int):
    """A tiny llama with rows k-quants can tile (multiples of 256), or not (576: SmolLM2's width)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = hidden, intermediate, layers
    config.num_attention_heads, config.num_key_value_heads = heads, heads // 2
    config.head_dim = hidden // heads
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def hand_made_plan(model) -> dict[str, str]:
    """A type per matrix: every block type somewhere; the output head left out (written at f16)."""
    plan = {"model.embed_tokens.weight": "iq4_nl"}
    attention = iter(ATTENTION_TYPES)
    for index, layer in enumerate(model.model.layers):
        for kind in ("q_proj", "k_proj", "v_proj", "o_proj"):
            plan[f"model.layers.{index}.self_attn.{kind}.weight"] = next(attention)
        for kind, type_name in FFN_TYPES.items():
            plan[f"model.layers.{index}.mlp.{kind}.weight"] = type_name
    plan[f"model.layers.{len(model.model.layers) - 1}.mlp.down_proj.weight"] = "q8_0"
    return plan


@pytest.fixture(scope="module")
def planned(tmp_path_factory, tiny_tokenizer):
    """A checkpoint whose matrices sit on their planned grids, with its plan files, and the plan."""
    model = block_llama(hidden=256, intermediate=512, layers=2, heads=4)
    types = hand_made_plan(model)
    parameters, params = dict(model.named_parameters()), {}
    with torch.no_grad():
        for name, type_name in types.items():
            block = block_format(type_name)
            params[name] = block.fit(parameters[name])
            parameters[name].copy_(block.round_columns(parameters[name], params[name], 0)[0])
    plan = {name: PlannedTensor(type_name, parameters[name].numel() // FORMATS[type_name].block_length
                                * FORMATS[type_name].bytes_per_block, 0.0) for name, type_name in types.items()}
    directory = tmp_path_factory.mktemp("planned") / "model"
    save(model, directory, tiny_tokenizer, stage="test",
         after_write=lambda tmp: write_plan(tmp, plan, params, {"budget": None}))
    return directory, types


@pytest.fixture(scope="module")
def planned_gguf(planned, tmp_path_factory):
    """The planned checkpoint through `slm export` with no --quant, and the command's report."""
    directory, _ = planned
    out = tmp_path_factory.mktemp("planned-gguf") / "planned.gguf"
    result = run_slm("export", str(directory), "--format", "gguf", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_the_config_offers_every_block_type():
    assert set(GGUF_QUANTS) == {"f32", "f16", "bf16", *FORMATS}


def test_a_plan_is_written_at_its_types_with_the_checkpoints_values_bit_for_bit(planned, planned_gguf):
    directory, types = planned
    out, report = planned_gguf
    lm = load(str(directory))
    assert report["quant"] == "plan" and report["calibrated_exact_layers"] == len(types)
    assert report["bytes"] == out.stat().st_size == gguf_file_size(lm, types)
    assert_plan_written_exactly(lm, out, types)


def test_llama_cpp_runs_the_planned_file_as_torch_runs_the_checkpoint(planned, planned_gguf, tiny_tokenizer):
    directory, types = planned
    lm = load(str(directory))
    on_llama_cpp = load(str(planned_gguf[0]), backend="llamacpp", logits_all=True)
    weights = Counter()
    for name, type_name in types.items():
        weights[type_name] += dict(lm.model.named_parameters())[name].numel()
    assert weights.most_common(1)[0][0] == "q4_K" and on_llama_cpp.file_type == "q4_k_m"
    ids = torch.tensor([tiny_tokenizer(SAMPLE_TEXT)["input_ids"][:24]])
    with torch.no_grad():
        expected = lm.model(ids).logits[0]
    got = on_llama_cpp.logits(ids, torch.ones_like(ids))[0]
    # The same weights, but llama.cpp rounds the activations it multiplies quantized blocks with to 8 bits: 1.5% of
    # the logits' scale here, where the weights before rounding give logits 34% away.
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


def test_a_matrix_changed_after_planning_is_refused(planned, tmp_path):
    directory, _ = planned
    lm = load(str(directory))
    with torch.no_grad():
        lm.model.model.layers[0].self_attn.v_proj.weight[0, 0] += 1e-3
    with pytest.raises(SlmError, match=r"^model\.layers\.0\.self_attn\.v_proj\.weight is no longer on the q3_K grid "
                                       r"its GGUF plan rounded it to .*quantize it again$"):
        export_gguf(lm, tmp_path / "changed.gguf")
    with pytest.raises(SlmError, match=r"--quant q8_0: .* has a GGUF plan \(gguf-plan.json\) that decides each "
                                       r"weight matrix's type; drop --quant"):
        export_gguf(lm, tmp_path / "changed.gguf", "Q8_0")
    assert not list(tmp_path.iterdir())


def test_a_k_quant_falls_back_where_llama_cpp_does(tmp_path, tiny_tokenizer):
    directory = save(block_llama(hidden=576, intermediate=512, layers=1, heads=9), tmp_path / "wide",
                     tiny_tokenizer, stage="test")
    lm = load(str(directory))
    written = export_gguf(lm, tmp_path / "wide.q4_k.gguf", "q4_k")
    types = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(written.path).tensors}
    # Rows of 576 are no multiple of 256: q5_0 there; down_proj's rows of 512 take q4_K; the edges q8_0.
    assert types["blk.0.ffn_down.weight"] == "Q4_K" and types["token_embd.weight"] == types["output.weight"] == "Q8_0"
    assert written.fallbacks == {name: "q5_0" for name in types
                                 if name.startswith("blk.0.") and "norm" not in name and "ffn_down" not in name}
    assert written.bytes == gguf_file_size(lm, "q4_K")

    # llama.cpp's own quantizer, every tensor at q4_K (pure), falls back on the same matrices to the same type.
    reference = tmp_path / "wide.f32.gguf"
    export_gguf(lm, reference, "f32")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.pure, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, True, 2
    quantized = tmp_path / "wide.llama-quantize.gguf"
    assert llama_cpp.llama_model_quantize(str(reference).encode(), str(quantized).encode(), params) == 0
    theirs = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(quantized).tensors}
    assert {name: kind for name, kind in theirs.items() if name.startswith("blk.")} == \
        {name: kind for name, kind in types.items() if name.startswith("blk.")}
    assert set(K_QUANT_FALLBACK) == {name for name in FORMATS if name.endswith("_K")}
