"""On-policy distillation (GKD): batches whose answers the student samples, labelled exactly on those answers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import slmkit
from slmkit.distillation import DistillConfig
from slmkit.distillation.on_policy import draws_on_policy, on_policy_batch
from slmkit.distillation.trainer import DistillationTrainer
from slmkit.errors import SlmError
from slmkit.finetuning import FinetuneConfig

I = -100  # noqa: E741 (the ignored label, short so the rows below line up)
PAD, END = 0, 9


def test_answers_replace_the_data_and_only_they_are_labelled():
    inputs = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 8, PAD], [5, 6, 7, 7, 7, 7], [5, 5, 5, 5, 5, 8]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]),
        "labels": torch.tensor([[I, I, 7, 8, 8, I], [I, 6, 7, 7, 7, 7], [I, I, I, I, I, I]]),
    }
    asked = []

    def sample(prompts, budget):
        asked.append((prompts, budget))
        return [[1, 2, END, 3, 4], [1, END], [2, 3]][:len(prompts)]

    batch = on_policy_batch(inputs, sample, pad_id=PAD, end_ids={END}, max_length=6, max_new_tokens=8)
    # prompts: the tokens before each row's first label; the budget is what the shortest prompt leaves
    assert asked == [([[5, 6], [5]], 5)]  # row 3 has no answer to replace: it stays as it was
    assert batch["input_ids"].tolist() == [[5, 6, 1, 2, END, PAD], [5, 1, END, PAD, PAD, PAD], [5, 5, 5, 5, 5, 8]]
    assert batch["labels"].tolist() == [[I, I, 1, 2, END, I], [I, 1, END, I, I, I], [I, I, I, I, I, I]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]


def test_an_answer_is_cut_to_the_room_its_prompt_leaves():
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 7]]), "labels": torch.tensor([[I, I, I, 7]])}
    batch = on_policy_batch(inputs, lambda prompts, budget: [[1, 2, 3, 4]], pad_id=PAD, end_ids={END},
                            max_length=5, max_new_tokens=8)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1, 2]] and batch["labels"].tolist() == [[I, I, I, 1, 2]]


def test_draws_follow_the_ratio_and_repeat_for_the_same_step():
    draws = [draws_on_policy(0.3, 0, step, 0) for step in range(2000)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws == [draws_on_policy(0.3, 0, step, 0) for step in range(2000)]
    assert not any(draws_on_policy(0.0, 0, step, 0) for step in range(100))
    assert all(draws_on_policy(1.0, 0, step, 1) for step in range(100))


def chats(path, count=24):
    rows = [{"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_an_on_policy_run_trains_on_the_students_samples(tmp_path, tiny_llama_dir, tiny_tokenizer, monkeypatch):
    data = chats(tmp_path / "chat.jsonl")
    teacher = tmp_path / "teacher"
    slmkit.finetune(str(tiny_llama_dir), teacher, FinetuneConfig(data=str(data), max_steps=6, batch_size=8,
                                                                 max_length=64, lr=1e-2, device="cpu"))
    answers = {tuple(tiny_tokenizer(f"{i} plus {i} is {2 * i}.").input_ids) for i in range(24)}
    seen = []
    compute_loss = DistillationTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append({key: inputs[key].clone() for key in ("input_ids", "labels")})
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", spy)

    def config(**overrides):
        return DistillConfig(**{**dict(data=str(data), max_steps=3, batch_size=4, max_length=64, lr=1e-3,
                                       device="cpu", loss="jsd", on_policy_ratio=1.0, on_policy_max_new_tokens=6,
                                       save_every=1, alpha_ce=0.5), **overrides})

    result = slmkit.distill(str(teacher), str(tiny_llama_dir), tmp_path / "gkd", config())
    assert result.completed and len(seen) == 3
    prompt = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    for batch in seen:
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            labelled = (labels != I).nonzero().flatten()
            assert 1 <= len(labelled) <= 6  # the sampled answer, at most max_new_tokens
            assert labelled.tolist() == list(range(int(labelled[0]), int(labelled[-1]) + 1))
            assert torch.equal(labels[labelled], ids[labelled])
            assert tuple(ids[labelled].tolist()) not in answers  # not the data's own answer
            assert tiny_tokenizer.decode(ids[:int(labelled[0])]).startswith(prompt.split("x")[0])
    assert [share for _, share in result.curve["parts"]["on_policy_share"]] == [1.0, 1.0, 1.0]
    assert "ce_loss" not in result.curve["parts"]  # no cross-entropy on the student's own samples
    assert result.summary["eval_perplexity"] == pytest.approx(math.exp(result.summary["eval_ce_loss"]))

    def stop_at_step_2(step, total, facts):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after checkpoint-1: the resumed run samples steps 2 and 3 again
        slmkit.distill(str(teacher), str(tiny_llama_dir), tmp_path / "resumed", config(), progress=stop_at_step_2)
    slmkit.distill(str(teacher), str(tiny_llama_dir), tmp_path / "resumed", config(resume=True))
    assert all(torch.equal(seen[i]["input_ids"], seen[j]["input_ids"]) for i, j in ((0, 3), (1, 4), (1, 5), (2, 6)))
    assert len(seen) == 7
    expected, got = (load_file(tmp_path / name / "model.safetensors") for name in ("gkd", "resumed"))
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_on_policy_settings_that_cannot_work_are_refused(tmp_path):
    text = tmp_path / "docs.txt"
    text.write_text("a document.\n\nanother one.\n")
    with pytest.raises(SlmError, match=r"--on-policy-ratio 1.5: must be in \[0, 1\]"):
        DistillConfig(data=str(text), on_policy_ratio=1.5)
    with pytest.raises(SlmError, match="cannot with --packing"):
        DistillConfig(data=str(text), on_policy_ratio=0.5, packing=True)
    with pytest.raises(SlmError, match="need the live teacher"):
        DistillConfig(data=str(text), on_policy_ratio=0.5, teacher_cache=str(tmp_path / "cache"))
    with pytest.raises(SlmError, match="needs chat or completion data; .* is text data"):
        slmkit.distill("teacher", "student", tmp_path / "out", DistillConfig(data=str(text), on_policy_ratio=0.5))
    assert not (tmp_path / "out").exists()
