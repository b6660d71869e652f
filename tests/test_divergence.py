"""KL divergence to a reference model (slm eval --reference): zero against itself, and against a perturbed copy
equal to the divergence computed here from the two models' full logits."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slmkit
from slmkit.errors import SlmError
from slmkit.evaluation import evaluate
from slmkit.evaluation.divergence import divergence

from conftest import SAMPLE_TEXT, run_slm


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    return slmkit.load(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def perturbed(tiny_lm):
    twin = copy.copy(tiny_lm)
    twin.model = copy.deepcopy(tiny_lm.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in twin.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return twin


def test_a_model_against_itself_diverges_by_nothing(tiny_lm):
    result = divergence(tiny_lm, tiny_lm, SAMPLE_TEXT, max_length=64)
    assert result["kl_mean"] == result["kl_max"] == 0.0
    assert result["top1_agreement"] == 1.0
    assert result["perplexity_ratio"] == pytest.approx(1.0)


def test_divergence_from_a_perturbed_copy_equals_the_direct_computation(tiny_lm, perturbed):
    ids = torch.tensor(tiny_lm.tokenizer(SAMPLE_TEXT).input_ids)
    kls, agree, nll, reference_nll = [], [], 0.0, 0.0
    with torch.no_grad():
        for begin in range(0, len(ids), 48):
            window = ids[None, begin:begin + 48]
            if window.shape[1] < 2:
                continue
            log_p = F.log_softmax(tiny_lm.model(window).logits[0, :-1].double(), -1)
            log_q = F.log_softmax(perturbed.model(window).logits[0, :-1].double(), -1)
            kls += (log_p.exp() * (log_p - log_q)).sum(-1).tolist()
            agree += (log_p.argmax(-1) == log_q.argmax(-1)).tolist()
            targets = window[0, 1:, None]
            nll -= log_q.gather(1, targets).sum().item()
            reference_nll -= log_p.gather(1, targets).sum().item()
    result = divergence(perturbed, tiny_lm, SAMPLE_TEXT, max_length=48, batch_size=2)
    assert result["scored_tokens"] == len(kls)
    assert result["kl_mean"] > 1e-4  # the perturbation moved the distributions
    assert result["kl_mean"] == pytest.approx(np.mean(kls), rel=1e-4)
    assert result["kl_median"] == pytest.approx(np.median(kls), rel=1e-3)
    assert result["kl_p99"] == pytest.approx(np.percentile(kls, 99), rel=1e-3)
    assert result["top1_agreement"] == pytest.approx(np.mean(agree))
    assert result["perplexity_ratio"] == pytest.approx(np.exp((nll - reference_nll) / len(kls)), rel=1e-4)


def test_a_reference_needs_a_text(tiny_lm, tmp_path):
    choices = tmp_path / "arc.jsonl"
    choices.write_text('{"question": "2+2?", "choices": {"text": ["4", "5"], "label": ["A", "B"]}, "answerKey": "A"}\n')
    with pytest.raises(SlmError, match="--reference compares next-token distributions on a text"):
        evaluate(tiny_lm, choices, reference=tiny_lm)


def test_slm_eval_reports_the_divergence_of_an_exported_gguf_from_its_original(tiny_llama_dir, tmp_path):
    """The file runs on llama.cpp, the reference on torch: an f16 export stays within float rounding of it."""
    gguf = tmp_path / "tiny.f16.gguf"
    slmkit.export(slmkit.load(str(tiny_llama_dir)), gguf, slmkit.GGUFConfig(quant="f16"))
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT)
    result = run_slm("eval", str(gguf), "--reference", str(tiny_llama_dir), "--data", str(text), "--max-length",
                     "64", "--json")
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["kl_mean"] < 1e-3 and measured["top1_agreement"] > 0.95
    assert measured["perplexity_ratio"] == pytest.approx(1.0, abs=0.01)
    refused = run_slm("eval", str(gguf), "--reference", str(tiny_llama_dir), "--data", str(text), "--task",
                      "choice")
    assert refused.returncode != 0 and "--reference compares next-token distributions" in refused.stderr
