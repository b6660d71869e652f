"""`slmkit.distill` on tiny models: the student moves toward the teacher; mismatched ids are refused first."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, tiny_config

import slmkit
from slmkit.distillation import DistillConfig, StudentConfig
from slmkit.distillation.losses import distillation_loss
from slmkit.errors import SlmError
from slmkit.finetuning import FinetuneConfig

DOCS = "\n\n".join(f"the small model number {i} runs on a laptop and answers quickly." for i in range(40))


def kd_and_perplexity(student_dir, teacher, text_ids) -> tuple[float, float]:
    student = slmkit.load(str(student_dir)).model
    with torch.inference_mode():
        student_logits, teacher_logits = student(text_ids).logits[0, :-1], teacher(text_ids).logits[0, :-1]
        kd = distillation_loss(student_logits, teacher_logits).item()
        nll = torch.nn.functional.cross_entropy(student_logits, text_ids[0, 1:]).item()
    return kd, float(torch.tensor(nll).exp())


def test_distilling_moves_the_student_toward_the_teacher(tmp_path, tiny_llama_dir, tiny_tokenizer):
    data = tmp_path / "docs.txt"
    data.write_text(DOCS)
    teacher_dir = tmp_path / "teacher"
    slmkit.finetune(str(tiny_llama_dir), teacher_dir, FinetuneConfig(data=str(data), max_steps=12, batch_size=8,
                                                                     max_length=64, lr=1e-2, device="cpu"))
    lm = slmkit.load(str(tiny_llama_dir))
    slmkit.student(lm, StudentConfig(layers=(0,)))
    student_dir = slmkit.save(lm, tmp_path / "student", stage="student", parent=str(teacher_dir))
    teacher = slmkit.load(str(teacher_dir)).model
    ids = tiny_tokenizer(DOCS[:300], return_tensors="pt").input_ids
    before = kd_and_perplexity(student_dir, teacher, ids)
    result = slmkit.distill(str(teacher_dir), str(student_dir), tmp_path / "kd",
                            DistillConfig(data=str(data), max_steps=12, batch_size=8, max_length=64, lr=1e-2,
                                          temperature=2.0, device="cpu"))
    after = kd_and_perplexity(tmp_path / "kd", teacher, ids)
    assert after[0] < before[0] / 2 and after[1] < before[1]
    curve = result.curve["train"]
    assert curve[-1][1] < curve[0][1]
    manifest = json.loads((tmp_path / "kd" / "slmkit.json").read_text())
    assert manifest["stage"] == "distill" and manifest["parent"] == str(student_dir)
    assert manifest["config"]["teacher"] == str(teacher_dir) and manifest["config"]["loss"] == "fkl"
    assert json.loads((tmp_path / "kd" / "config.json").read_text())["num_hidden_layers"] == 1


def test_mismatched_vocabularies_are_refused_before_training(tmp_path, tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.vocab_size = VOCAB + 16
    other = tmp_path / "other"
    slmkit.save(AutoModelForCausalLM.from_config(config), other, tiny_tokenizer, stage="test")
    data = tmp_path / "docs.txt"
    data.write_text(DOCS)
    with pytest.raises(SlmError, match=f"the teacher's output layer has {VOCAB} tokens, the student's {VOCAB + 16}"):
        slmkit.distill(str(tiny_llama_dir), str(other), tmp_path / "kd",
                       DistillConfig(data=str(data), max_steps=2, device="cpu"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["docs.txt", "other"]
    for settings, message in [(dict(loss="kl"), "--loss kl"), (dict(alpha_ce=2), "--alpha-ce 2"),
                              (dict(task="seq2seq"), "distillation takes chat, completion, text")]:
        with pytest.raises(SlmError, match=message):
            DistillConfig(data=str(data), **settings)


def test_cli_distills_and_refuses_a_bad_loss_in_one_line(tmp_path, tiny_llama_dir):
    from conftest import run_slm

    data = tmp_path / "docs.txt"
    data.write_text(DOCS)
    done = run_slm("distill", str(tiny_llama_dir), "-t", str(tiny_llama_dir), "--data", str(data), "--max-steps", "2",
                   "--batch-size", "4", "--max-length", "32", "--loss", "jsd", "--out", str(tmp_path / "kd"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 2 and summary["teacher"] == str(tiny_llama_dir)
    refused = run_slm("distill", str(tiny_llama_dir), "-t", str(tiny_llama_dir), "--data", str(data), "--loss", "kl",
                      "--out", str(tmp_path / "kd2"))
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == ["error: --loss kl: choose one of fkl, rkl, jsd, tvd"]


def test_only_positions_before_a_label_are_compared():
    from slmkit.distillation.losses import compared

    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, -100, -100, 2]])
    # logits at t predict the token at t + 1: rows (0,1), (0,2), (1,0), (1,3)
    assert torch.equal(compared(logits, labels), torch.stack([logits[0, 1], logits[0, 2], logits[1, 0], logits[1, 3]]))
    classifier = torch.randn(3, 4)
    assert compared(classifier, torch.tensor([0, 1, 2])) is classifier


def test_a_recipe_heals_a_pruned_model_by_distilling_from_the_original(tmp_path, tiny_llama_dir):
    from slmkit.pipeline.recipe import parse_recipe
    from slmkit.pipeline.report import collect_rows
    from slmkit.pipeline.run import run_recipe

    data = tmp_path / "docs.txt"
    data.write_text(DOCS)
    recipe = parse_recipe("""
name: heal
prompts: []
stages:
  - stage: structured
    name: pruned
    depth: 1
    calib_samples: 4
    calib_seq_len: 32
  - stage: distill
    name: healed
    max_steps: 3
    batch_size: 4
    max_length: 32
    temperature: 2.0
  - stage: eval
    models: [original, pruned, healed]
""", "heal.yaml")
    run = run_recipe(recipe, recipe_path="heal.yaml", model=str(tiny_llama_dir), data=str(data), out=tmp_path / "run")
    state = json.loads((run / "run.json").read_text())
    healed = state["stages"]["healed"]["result"]
    assert healed["teacher"] == str(tiny_llama_dir) and healed["steps"] == 3 and len(healed["loss_curve"]["train"]) == 3
    manifest = json.loads((run / "healed" / "slmkit.json").read_text())
    assert manifest["stage"] == "distill" and manifest["parent"] == str(run / "pruned")
    assert json.loads((run / "healed" / "config.json").read_text())["num_hidden_layers"] == 1
    assert [row.label for row in collect_rows(run, state, "heal")] == ["original", "pruned", "healed"]


def test_a_full_vocabulary_cache_trains_as_the_live_teacher_and_is_built_once(tmp_path, tiny_llama_dir, monkeypatch):
    from slmkit.distillation.trainer import DistillationTrainer

    data = tmp_path / "docs.txt"
    data.write_text(DOCS)
    fresh = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32,
             "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128}
    (tmp_path / "fresh.json").write_text(json.dumps(fresh))
    lm = slmkit.load(str(tiny_llama_dir))
    slmkit.student(lm, StudentConfig(config=str(tmp_path / "fresh.json")))  # far from the teacher: a real loss
    student = slmkit.save(lm, tmp_path / "student", stage="student", parent=str(tiny_llama_dir))

    losses = {}

    def run(out: str, **cache) -> dict[str, torch.Tensor]:
        settings = DistillConfig(data=str(data), max_steps=4, batch_size=4, max_length=32, lr=1e-3, packing=True,
                                 temperature=2.0, device="cpu", **cache)
        losses[out] = [loss for _, loss in slmkit.distill(str(tiny_llama_dir), str(student), tmp_path / out,
                                                           settings).curve["train"]]
        return slmkit.load(str(tmp_path / out)).model.state_dict()

    run("live")
    cached = run("cached", teacher_cache=str(tmp_path / "cache"), top_k_logits=VOCAB)
    # float16 log-probabilities in the cache: the live teacher's losses up to that rounding, step after step
    # (weights are not compared: Adam turns a gradient's last digits into whole steps on near-zero gradients)
    assert losses["cached"] == pytest.approx(losses["live"], rel=5e-3)
    (entry,) = (tmp_path / "cache").iterdir()
    index = json.loads((entry / "cache.json").read_text())
    assert index["top_k"] == VOCAB and index["teacher"] == str(tiny_llama_dir) and index["shards"] == 1
    stamps = {path.name: path.stat().st_mtime_ns for path in entry.iterdir()}

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although the cache holds every row")

    monkeypatch.setattr(DistillationTrainer, "_teacher_outputs", no_teacher)
    again = run("again", teacher_cache=str(tmp_path / "cache"), top_k_logits=VOCAB)
    assert all(torch.equal(again[name], cached[name]) for name in cached)
    assert {path.name: path.stat().st_mtime_ns for path in entry.iterdir()} == stamps
    run("top8", teacher_cache=str(tmp_path / "cache"), top_k_logits=8)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # another k: its own entry


def _sharp_llama(seed: int):
    """A tiny llama whose distributions are far from uniform (so two seeds' KL is a real loss)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.initializer_range = 0.2
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def _distilled(tmp_path, tokenizer, name: str, **extra) -> tuple[list[float], float, float]:
    """A few steps of DistillationTrainer from one seed's llama to another's: (train losses, held-out KL before
    and after)."""
    from slmkit.data.training import collator
    from slmkit.distillation.trainer import DistillationTrainer
    from slmkit.train.base import training_arguments
    from slmkit.train.run import TrainingRun

    ids = torch.randint(0, VOCAB, (10, 16), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": row.tolist()} for row in ids]
    args = training_arguments(str(tmp_path / name), max_steps=6, per_device_train_batch_size=2,
                              per_device_eval_batch_size=3, learning_rate=3e-3, use_cpu=True, logging_steps=1,
                              save_strategy="no", seed=0)
    run = TrainingRun(DistillationTrainer, _sharp_llama(1), args, train=rows[2:], held_out=rows[:2],
                      collator=collator("text", tokenizer), tokenizer=tokenizer, teacher=_sharp_llama(0), loss="fkl",
                      temperature=2.0, alpha_ce=0.0, beta=0.5, **extra)
    before = run.trainer.evaluate()["eval_kd_loss"]
    run.train()
    return [loss for _, loss in run.curve["train"]], before, run.trainer.evaluate()["eval_kd_loss"]


def test_a_teacher_memory_trains_as_the_live_teacher_without_running_it_again(tmp_path, tiny_tokenizer, monkeypatch):
    from slmkit.distillation.trainer import DistillationTrainer

    live = _distilled(tmp_path, tiny_tokenizer, "live")
    forwards = []
    monkeypatch.setattr(DistillationTrainer, "_teacher_outputs", lambda *args: forwards.append(1))
    remembered = _distilled(tmp_path, tiny_tokenizer, "memory", teacher_memory_bytes=1 << 20)
    assert not forwards  # the memory answered every training and evaluation batch
    # float16 log-probabilities: the live teacher's losses up to that rounding, step after step
    assert remembered[0] == pytest.approx(live[0], rel=1e-3) and len(live[0]) == 6
    assert remembered[1:] == pytest.approx(live[1:], rel=1e-3) and live[2] < live[1]


def test_a_teacher_memory_batches_rows_as_one_by_one_and_keeps_nothing_past_its_bytes(tmp_path, tiny_tokenizer):
    from slmkit.data.training import collator
    from slmkit.distillation.cache import TeacherMemory

    teacher, collate = _sharp_llama(0), collator("text", tiny_tokenizer)
    rows = [{"input_ids": list(range(5 + n, 15 + 2 * n))} for n in range(5)]  # 10 to 13 tokens: padded batches
    by_row = TeacherMemory.build(teacher, rows, collate, "cpu", max_bytes=1 << 20)
    batched = TeacherMemory.build(teacher, rows, collate, "cpu", max_bytes=1 << 20, batch_size=3)
    assert [len(logprobs) for logprobs in batched.logprobs] == [9, 10, 11, 12, 13]
    assert all(torch.allclose(a.float(), b.float(), atol=2e-3) for a, b in zip(by_row.logprobs, batched.logprobs))
    assert batched.lookup([4, 0], "cpu").shape == (13 + 9, VOCAB)
    assert TeacherMemory.build(teacher, rows, collate, "cpu", max_bytes=(10 + 11 + 12 + 13 + 14) * VOCAB) is None


def test_a_bfloat16_autocast_student_trains_and_is_evaluated_in_float32(tmp_path, tiny_tokenizer):
    live = _distilled(tmp_path, tiny_tokenizer, "float32")
    autocast = _distilled(tmp_path, tiny_tokenizer, "bfloat16", autocast=torch.bfloat16)
    assert autocast[1] == live[1]  # the evaluation before training: float32 both
    assert autocast[2] < autocast[1] and autocast[0] != live[0]
    assert autocast[2] == pytest.approx(live[2], rel=0.05)


def test_a_teacher_memory_is_refused_beside_what_needs_the_live_teacher(tmp_path, tiny_tokenizer):
    from slmkit.distillation.trainer import OnPolicy

    on_policy = OnPolicy(0.5, 4, 1.0, 0, frozenset(), 16, 0)
    with pytest.raises(SlmError, match="on-policy batches each need it"):
        _distilled(tmp_path, tiny_tokenizer, "refused", teacher_memory_bytes=1 << 20, on_policy=on_policy)
