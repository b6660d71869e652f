"""ExecuTorch export (`slm export --format executorch`): the .pte run by ExecuTorch's runtime gives the greedy
tokens and the scores of the same torchao-quantized model in torch, and slm's verbs run it like any artefact."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import run_slm, tiny_model
from test_cli import assert_one_line_error

pytest.importorskip("executorch")

import slmkit  # noqa: E402
from slmkit import load, save  # noqa: E402
from slmkit.errors import ModelLoadError, SlmError  # noqa: E402
from slmkit.exporters import ExecuTorchConfig  # noqa: E402
from slmkit.exporters.executorch import _quantize  # noqa: E402
from slmkit.runtime import open_model  # noqa: E402
from slmkit.runtime.executorch import ExecuTorchModel  # noqa: E402

PROMPT = [5, 17, 42, 99, 3, 250, 7, 128]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama checkpoint and its 8da4w .pte (a 64-token cache)."""
    root = tmp_path_factory.mktemp("executorch")
    checkpoint = save(tiny_model("llama", seed=1), root / "tiny", tiny_tokenizer)
    result = slmkit.export(load(str(checkpoint)), root / "pte", ExecuTorchConfig(max_context=64))
    return checkpoint, result


def quantized_in_torch(checkpoint):
    model = copy.deepcopy(load(str(checkpoint)).model)
    _quantize(model, "8da4w")
    return model.eval()


def test_the_program_decodes_the_quantized_models_greedy_tokens(exported):
    checkpoint, result = exported
    assert result.summary["quant"] == "8da4w" and result.summary["max_context"] == 64
    program = open_model(str(result.out))
    assert isinstance(program, ExecuTorchModel) and program.info().dtype == "8da4w"
    state = program.prefill(PROMPT, len(PROMPT) + 20)
    tokens = []
    for _ in range(20):
        tokens.append(int(state.logits.argmax()))
        program.decode(state)
    model, ids = quantized_in_torch(checkpoint), list(PROMPT)
    expected = []
    with torch.no_grad():
        for _ in range(20):
            expected.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            ids.append(expected[-1])
    assert tokens == expected


def test_the_program_scores_text_as_the_quantized_model_does(exported):
    checkpoint, result = exported
    program = open_model(str(result.out))
    ids = torch.tensor([PROMPT + [11, 12, 13], PROMPT + [0, 0, 0]])
    mask = torch.ones_like(ids)
    mask[1, len(PROMPT):] = 0
    scores = program.logits(ids, mask)
    with torch.no_grad():
        expected = quantized_in_torch(checkpoint)(ids[:1]).logits[0]
    # XNNPACK rounds the dynamic int8 activations as torchao does, its sums in another order.
    torch.testing.assert_close(scores[0], expected, atol=5e-3, rtol=0)
    assert scores[1, len(PROMPT):].abs().sum() == 0  # past the row's end
    with pytest.raises(SlmError, match="exceed the program's context"):
        program.logits(torch.zeros(1, 80, dtype=torch.long), torch.ones(1, 80, dtype=torch.long))


def test_slm_runs_the_export_and_refuses_what_does_not_apply(exported, tmp_path):
    checkpoint, result = exported
    done = run_slm("bench", str(result.out), "--prompt-tokens", "8", "--gen-tokens", "4", "--repeats", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert '"backend": "executorch"' in done.stdout and '"decode_tokens_per_s"' in done.stdout
    assert_one_line_error(run_slm("export", str(checkpoint), "--format", "executorch", "--quant", "q4_0", "--out",
                                  str(tmp_path / "x")), "does not apply to --format executorch")
    assert_one_line_error(run_slm("export", str(checkpoint), "--max-context", "64", "--out",
                                  str(tmp_path / "x.gguf")), "--max-context applies to --format executorch")
    with pytest.raises(ModelLoadError, match="an ExecuTorch export"):
        load(str(result.out))


def test_a_recipe_export_stage_takes_format_executorch():
    from slmkit.pipeline.recipe import parse_recipe

    recipe = parse_recipe("name: x\nstages:\n  - stage: export\n    format: executorch\n    max_context: 256\n",
                          "r.yaml")
    assert recipe.stages[0].config() == ExecuTorchConfig(quant="8da4w", max_context=256)
    with pytest.raises(SlmError, match="does not apply to --format executorch"):
        parse_recipe("name: x\nstages:\n  - stage: export\n    format: executorch\n    quant: q4_0\n", "r.yaml")
