"""Hidden-state and attention distillation: layer maps, the losses by hand, projections that learn, and a run
that resumes into the weights of an uninterrupted one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config

import slmkit
from slmkit.distillation import DistillConfig
from slmkit.distillation.intermediate import (LayerPairs, attention_loss, hidden_loss, parse_layer_map, projections,
                                         resolve_layer_map)
from slmkit.distillation.trainer import PROJECTIONS_FILE
from slmkit.errors import SlmError
from slmkit.finetuning import FinetuneConfig, checkpoint_dir


def blocks(count: int, width: int = 32):
    text = SimpleNamespace(num_hidden_layers=count, hidden_size=width)
    return SimpleNamespace(get_text_config=lambda: text)


def test_auto_maps_blocks_uniformly_and_the_last_meets_the_last():
    assert resolve_layer_map("auto", blocks(3), blocks(6)).pairs == ((1, 2), (2, 4), (3, 6))
    assert resolve_layer_map("auto", blocks(4), blocks(6)).pairs == ((1, 2), (2, 3), (3, 4), (4, 6))
    assert resolve_layer_map("0:0,1:3", blocks(1), blocks(3)).pairs == ((0, 0), (1, 3))
    assert resolve_layer_map("auto", blocks(4), blocks(2)).pairs == ((1, 1), (2, 1), (3, 2), (4, 2))  # never 0
    assert not resolve_layer_map("auto", blocks(2, 16), blocks(2, 16)).needs_projection
    assert resolve_layer_map("auto", blocks(2, 16), blocks(2, 32)).needs_projection


@pytest.mark.parametrize("text, message", [
    ("1-2", "expected auto or student:teacher"),
    ("1:2,1:3", "each student layer may be paired once"),
    ("a:1", "expected auto or student:teacher"),
    ("\u00b2:1", "expected auto or student:teacher"),  # a digit to str.isdigit, not to int()
])
def test_malformed_layer_maps_are_refused(text, message):
    with pytest.raises(SlmError, match=message):
        parse_layer_map(text)


def test_a_layer_beyond_the_model_is_named():
    with pytest.raises(SlmError, match="the teacher has layers 0..6 .* 7 is not one"):
        resolve_layer_map("1:7", blocks(3), blocks(6))


def test_hidden_losses_equal_hand_computations_over_real_tokens_only():
    torch.manual_seed(0)
    student = [torch.randn(2, 3, 4) for _ in range(2)]
    teacher = [torch.randn(2, 3, 4) for _ in range(3)]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    layers = LayerPairs(((1, 2),), 4, 4)
    real = mask.bool()
    expected_mse = ((student[1][real] - teacher[2][real]) ** 2).mean()
    torch.testing.assert_close(hidden_loss("mse", student, teacher, layers, None, mask), expected_mse)
    cosines = [torch.dot(s, t) / (s.norm() * t.norm()) for s, t in zip(student[1][real], teacher[2][real])]
    expected_cosine = 1 - torch.stack(cosines).mean()
    torch.testing.assert_close(hidden_loss("cosine", student, teacher, layers, None, mask), expected_cosine)
    padded = [s.clone() for s in student]
    padded[1][0, 2] = 1e6  # a padding token's state does not count
    torch.testing.assert_close(hidden_loss("mse", padded, teacher, layers, None, mask), expected_mse)


def test_projections_get_gradients_when_the_widths_differ():
    torch.manual_seed(0)
    layers = LayerPairs(((1, 2), (2, 4)), 8, 16)
    maps = projections(layers)
    student = [torch.randn(2, 5, 8, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 5, 16) for _ in range(5)]
    hidden_loss("mse", student, teacher, layers, maps, None).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in maps.parameters())
    assert student[1].grad.abs().sum() > 0 and student[0].grad is None


def test_attention_loss_is_the_kl_per_head_and_real_query():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0]])

    def attention(seed):
        generator = torch.Generator().manual_seed(seed)
        scores = torch.randn(1, 2, 4, 4, generator=generator).masked_fill(mask[:, None, None, :] == 0, -torch.inf)
        return scores.softmax(-1)

    student, teacher = [attention(1)], [attention(2)]
    layers = LayerPairs(((1, 1),), 8, 8)
    p, q = teacher[0][0, :, :3, :3], student[0][0, :, :3, :3]  # heads x real queries x real keys
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(attention_loss(student, teacher, layers, mask), expected)
    assert attention_loss(teacher, teacher, layers, mask).abs() < 1e-6


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "llama", "gpt2"])
def test_the_students_attention_weights_are_not_dropped_out(model_type):
    from conftest import tiny_model

    from slmkit.distillation.intermediate import without_attention_dropout

    model = tiny_model(model_type)
    model.set_attn_implementation("eager")
    for name in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"):  # every family's field
        if hasattr(model.config, name):
            setattr(model.config, name, 0.5)
    for name in ("hidden_dropout_prob", "dropout", "resid_pdrop", "embd_pdrop"):  # not the attention's: off
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)
    model = type(model)(model.config).eval()  # rebuilt: its attention modules hold the dropout of 0.5
    model.set_attn_implementation("eager")
    without_attention_dropout(model)
    ids = torch.tensor([[5, 17, 42, 99, 3, 8]])
    with torch.no_grad():
        expected = model(ids, output_attentions=True).attentions
        model.train()
        torch.manual_seed(0)
        got = model(ids, output_attentions=True).attentions
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expected, got))


ROWS = ["small models run on a phone\tpositive", "large models need a data centre\tnegative"] * 16


def encoder(tmp_path, tiny_tokenizer, name: str, **sizes):
    from transformers import AutoModel, BertConfig

    config = tiny_config("bert").to_dict() | sizes
    torch.manual_seed(1)
    model = AutoModel.from_config(BertConfig(**config)).eval()
    return slmkit.save(model, tmp_path / name, tiny_tokenizer, stage="test")


class Interrupted(Exception):
    pass


def test_a_narrower_student_learns_hidden_states_and_attention_and_resumes_exactly(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file

    data = tmp_path / "train.tsv"
    data.write_text("text\tlabel\n" + "\n".join(ROWS) + "\n")
    teacher = tmp_path / "teacher"
    slmkit.finetune(str(encoder(tmp_path, tiny_tokenizer, "bert")), teacher,
                    FinetuneConfig(data=str(data), max_steps=4, batch_size=8, lr=3e-3, max_length=32, device="cpu"))
    student = encoder(tmp_path, tiny_tokenizer, "student", hidden_size=16, intermediate_size=32, num_hidden_layers=1)

    def config(**overrides):
        return DistillConfig(**{**dict(data=str(data), max_steps=6, batch_size=8, max_length=32, lr=1e-2,
                                       save_every=2, device="cpu", hidden_loss="mse", layer_map="0:0,1:2",
                                       attention_loss=True, temperature=2.0), **overrides})

    whole = slmkit.distill(str(teacher), str(student), tmp_path / "whole", config())
    parts = whole.curve["parts"]
    assert parts["hidden_loss"][-1][1] < parts["hidden_loss"][0][1]
    assert parts["attention_loss"][-1][1] < parts["attention_loss"][0][1]
    manifest = json.loads((tmp_path / "whole" / "slmkit.json").read_text())
    assert manifest["config"]["hidden_loss"] == "mse" and manifest["config"]["layer_map"] == "0:0,1:2"
    saved = load_file(tmp_path / "whole" / "model.safetensors")
    assert not any("projection" in name for name in saved)
    assert saved["bert.embeddings.word_embeddings.weight"].shape[1] == 16

    def stop_at_step_3(step, total, facts):
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        slmkit.distill(str(teacher), str(student), tmp_path / "resumed", config(), progress=stop_at_step_3)
    kept = checkpoint_dir(tmp_path / "resumed") / "checkpoint-2"
    assert set(load_file(kept / PROJECTIONS_FILE)) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    slmkit.distill(str(teacher), str(student), tmp_path / "resumed", config(resume=True))
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(saved[name], resumed[name]) for name in saved)


def test_bad_internal_settings_are_one_line(tmp_path, tiny_tokenizer, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, LlamaConfig

    data = tmp_path / "train.tsv"
    data.write_text("text\tlabel\n" + "\n".join(ROWS) + "\n")
    with pytest.raises(SlmError, match="--hidden-loss l1: choose one of mse, cosine"):
        DistillConfig(data=str(data), hidden_loss="l1")
    with pytest.raises(SlmError, match="--layer-map pairs layers for --hidden-loss or --attention-loss"):
        DistillConfig(data=str(data), layer_map="1:2")
    from slmkit.pipeline.recipe import parse_recipe

    with pytest.raises(SlmError, match=r"stages\[0\].layer_map: write layer_map in quotes.*YAML read 186"):
        parse_recipe("name: kd\nstages:\n  - stage: distill\n    hidden_loss: mse\n    layer_map: 3:6\n", "r.yaml")
    with pytest.raises(SlmError, match="--hidden-loss and --attention-loss need the live teacher"):
        DistillConfig(data=str(data), hidden_loss="mse", teacher_cache=str(tmp_path / "cache"))
    text = tmp_path / "docs.txt"
    text.write_text("small models run on a phone.\n\nlarge models need a data centre.\n")
    config = tiny_config("llama").to_dict() | dict(num_attention_heads=2, num_key_value_heads=2)
    student = slmkit.save(AutoModelForCausalLM.from_config(LlamaConfig(**config)), tmp_path / "two-heads",
                          tiny_tokenizer, stage="test")
    with pytest.raises(SlmError, match="the student has 2 heads and the teacher 4"):
        slmkit.distill(str(tiny_llama_dir), str(student), tmp_path / "kd", DistillConfig(
            data=str(text), attention_loss=True, max_steps=1, device="cpu"))
    with pytest.raises(SlmError, match="the student has layers 0..2 .* 3 is not one"):
        slmkit.distill(str(tiny_llama_dir), str(student), tmp_path / "kd", DistillConfig(
            data=str(text), hidden_loss="cosine", layer_map="3:2", max_steps=1, device="cpu"))
    assert not (tmp_path / "kd").exists()


def test_a_lora_classifier_learns_soft_labels_and_hidden_states_and_a_cached_teacher_trains_alike(
        tmp_path, tiny_tokenizer):
    data = tmp_path / "train.tsv"
    data.write_text("text\tlabel\n" + "\n".join(ROWS) + "\n")
    teacher = tmp_path / "teacher"  # trained until it is sure: a KL of near-uniform rows is float16 noise
    slmkit.finetune(str(encoder(tmp_path, tiny_tokenizer, "bert")), teacher,
                    FinetuneConfig(data=str(data), max_steps=12, batch_size=8, lr=1e-2, max_length=32, device="cpu"))
    student = encoder(tmp_path, tiny_tokenizer, "student", num_hidden_layers=1)  # the teacher's width
    settings = dict(data=str(data), max_steps=8, batch_size=8, max_length=32, save_every=0, device="cpu",
                    temperature=2.0)

    lora = slmkit.distill(str(teacher), str(student), tmp_path / "lora", DistillConfig(
        **settings, lora=True, lora_rank=4, lr=2e-2, hidden_loss="cosine", layer_map="1:2"))
    parts = lora.curve["parts"]
    assert parts["kd_loss"][-1][1] < parts["kd_loss"][0][1]
    assert parts["hidden_loss"][-1][1] < parts["hidden_loss"][0][1]
    assert (tmp_path / "lora" / "adapter_config.json").is_file()  # an adapter on the student, as a LoRA fine-tune
    assert json.loads((tmp_path / "lora" / "slmkit.json").read_text())["config"]["hidden_loss"] == "cosine"

    # Two labels: a top-2 cache holds the teacher's whole distribution, so training on it is training on the
    # live teacher, up to the cache's float16 log-probabilities.
    live = slmkit.distill(str(teacher), str(student), tmp_path / "live", DistillConfig(**settings, lr=1e-2))
    cached = slmkit.distill(str(teacher), str(student), tmp_path / "cached", DistillConfig(
        **settings, lr=1e-2, teacher_cache=str(tmp_path / "cache"), top_k_logits=2))
    assert [loss for _, loss in cached.curve["train"]] == pytest.approx(
        [loss for _, loss in live.curve["train"]], rel=5e-3)
    assert live.curve["train"][-1][1] < live.curve["train"][0][1]
