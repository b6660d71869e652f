"""`slm student`: students made from a teacher's blocks, spaced out, or from a fresh config."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, run_slm, tiny_config

import slmkit
from slmkit.distillation import StudentConfig, evenly_spaced
from slmkit.errors import SlmError


def four_block_teacher(model_type: str, tmp_path, tokenizer):
    from transformers import AutoModel, AutoModelForCausalLM

    config = tiny_config(model_type)
    config.num_hidden_layers = 4
    if getattr(config, "layer_types", None):
        config.layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
        config.use_sliding_window, config.sliding_window = True, 16
    torch.manual_seed(0)
    auto = AutoModel if model_type == "bert" else AutoModelForCausalLM
    out = tmp_path / f"teacher-{model_type}"
    slmkit.save(auto.from_config(config).eval(), out, tokenizer, stage="test")
    return out


def test_evenly_spaced_blocks_start_at_the_first():
    assert evenly_spaced(12, 6) == [0, 2, 4, 6, 8, 10]  # DistilBERT's choice from BERT-base
    assert evenly_spaced(6, 3) == [0, 2, 4]
    assert evenly_spaced(30, 4) == [0, 7, 15, 22]


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_kept_blocks_carry_the_teachers_weights_and_the_cache_still_works(model_type, tmp_path, tiny_tokenizer):
    teacher_dir = four_block_teacher(model_type, tmp_path, tiny_tokenizer)
    teacher = slmkit.load(str(teacher_dir))
    lm = slmkit.load(str(teacher_dir))
    made = slmkit.student(lm, StudentConfig(layers=(0, 3)))
    assert made.summary["kept_blocks"] == [0, 3] and made.summary["teacher_blocks"] == 4 and made.out is None
    out = slmkit.save(lm, tmp_path / "student", result=made, parent=str(teacher_dir))
    student = slmkit.load(str(out))
    assert student.config.num_hidden_layers == 2
    if model_type == "qwen2":
        assert student.config.layer_types == ["full_attention", "sliding_attention"]
    teacher_blocks, student_blocks = teacher.model.model.layers, student.model.model.layers
    for new, old in [(0, 0), (1, 3)]:
        for (name, value), (_, expected) in zip(student_blocks[new].state_dict().items(),
                                                teacher_blocks[old].state_dict().items()):
            assert torch.equal(value, expected), name
    assert torch.equal(student.model.lm_head.weight, teacher.model.lm_head.weight)
    # Each attention reads its own cache slot: greedy with the cache equals recomputing the whole sequence.
    ids = tiny_tokenizer("small models run on a laptop", return_tensors="pt").input_ids
    cached = student.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    sequence = ids[0].tolist()
    with torch.inference_mode():
        for _ in range(8):
            sequence.append(int(student.model(torch.tensor([sequence]), use_cache=False).logits[0, -1].argmax()))
    assert cached.tolist() == sequence[ids.shape[1]:]
    manifest = json.loads((out / "slmkit.json").read_text())
    assert manifest["parent"] == str(teacher_dir) and manifest["stage"] == "student"
    assert manifest["config"]["layers"] == [0, 3] and manifest["metrics"]["kept_blocks"] == [0, 3]


def test_an_encoder_student_keeps_evenly_spaced_layers(tmp_path, tiny_tokenizer):
    teacher_dir = four_block_teacher("bert", tmp_path, tiny_tokenizer)
    lm = slmkit.load(str(teacher_dir))
    teacher_layer = {k: v.clone() for k, v in lm.model.encoder.layer[2].state_dict().items()}
    assert slmkit.student(lm, StudentConfig(depth=2)).summary["kept_blocks"] == [0, 2]
    assert lm.config.num_hidden_layers == 2 and len(lm.model.encoder.layer) == 2
    assert all(torch.equal(v, teacher_layer[k]) for k, v in lm.model.encoder.layer[1].state_dict().items())


def test_a_fresh_student_shares_the_vocabulary(tmp_path, tiny_tokenizer, tiny_llama_dir):
    small = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32,
             "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "max_position_embeddings": 128}
    (tmp_path / "small.json").write_text("\ufeff" + json.dumps(small))  # a byte-order mark, as editors may write
    lm = slmkit.load(str(tiny_llama_dir))
    report = slmkit.student(lm, StudentConfig(config=str(tmp_path / "small.json"), seed=1)).summary
    assert report["architecture"] == "llama"
    assert report["parameters"] == sum(p.numel() for p in lm.model.parameters()) < 20_000
    assert lm.model.config.hidden_size == 16
    (tmp_path / "wide.json").write_text(json.dumps({**small, "vocab_size": VOCAB + 8}))
    with pytest.raises(SlmError, match=f"vocab_size {VOCAB + 8} differs from the teacher's {VOCAB}"):
        slmkit.student(slmkit.load(str(tiny_llama_dir)), StudentConfig(config=str(tmp_path / "wide.json")))


@pytest.mark.parametrize("settings, message", [
    (dict(), "give one of --layers, --depth, --config"),
    (dict(layers=(0,), depth=1), "--layers and --depth both choose the student"),
    (dict(layers=(2, 0)), "give each block once, in order"),
    (dict(layers=()), "--layers is empty"),
    (dict(depth=0), "keep at least 1 block"),
])
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(SlmError, match=message):
        StudentConfig(**settings)


def test_impossible_students_are_refused(tiny_llama_dir):
    lm = slmkit.load(str(tiny_llama_dir))  # 2 blocks
    for settings, message in [(dict(layers=(0, 5)), r"blocks 0\.\.1; 5 is not one"),
                              (dict(layers=(0, 1)), "keeps all 2 blocks"),
                              (dict(depth=2), "the teacher has 2 blocks; a student keeps fewer")]:
        with pytest.raises(SlmError, match=message):
            slmkit.student(lm, StudentConfig(**settings))


def test_cli_writes_a_student_and_refuses_a_full_out(tmp_path, tiny_tokenizer):
    teacher_dir = four_block_teacher("llama", tmp_path, tiny_tokenizer)
    done = run_slm("student", str(teacher_dir), "--layers", "1,2", "--out", str(tmp_path / "s"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kept_blocks"] == [1, 2]
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_hidden_layers"] == 2
    again = run_slm("student", str(teacher_dir), "--depth", "2", "--out", str(tmp_path / "s"))
    assert again.returncode != 0 and again.stderr.strip().splitlines() == [
        f"error: {tmp_path / 's'} is not empty; choose another --out or pass --force to replace it"]


def test_a_width_student_is_structured_pruning(tiny_llama_dir):
    lm = slmkit.load(str(tiny_llama_dir))
    report = slmkit.student(lm, StudentConfig(width={"ffn": 32}), torch.randint(0, VOCAB, (4, 16))).summary
    assert lm.config.intermediate_size == 32 == lm.model.model.layers[0].mlp.down_proj.in_features
    assert report["parameters_after"] == sum(p.numel() for p in lm.model.parameters())
