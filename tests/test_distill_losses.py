"""Distillation losses against hand computations: temperature, the top-k missing mass, chunking."""

from __future__ import annotations

import math

import pytest
import torch

from slmkit.distillation.losses import TopK, distillation_loss, teacher_with_rest, top_k
from slmkit.errors import SlmError

STUDENT = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]])
TEACHER = torch.tensor([[1.0, 2.0, 0.5, -2.0], [0.0, 1.0, 2.0, 1.0]])


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def by_hand(loss: str, temperature: float = 1.0, beta: float = 0.5) -> float:
    values = []
    for s_row, t_row in zip(STUDENT.tolist(), TEACHER.tolist()):
        s, t = softmax(s_row, temperature), softmax(t_row, temperature)
        if loss == "fkl":
            values.append(kl(t, s))
        elif loss == "rkl":
            values.append(kl(s, t))
        elif loss == "tvd":
            values.append(0.5 * sum(abs(a - b) for a, b in zip(t, s)))
        else:
            m = [beta * a + (1 - beta) * b for a, b in zip(t, s)]
            values.append(beta * kl(t, m) + (1 - beta) * kl(s, m))
    return sum(values) / len(values) * temperature ** 2


@pytest.mark.parametrize("loss, temperature, beta", [
    ("fkl", 1.0, 0.5), ("fkl", 2.0, 0.5), ("rkl", 1.0, 0.5), ("rkl", 3.0, 0.5), ("tvd", 1.0, 0.5),
    ("tvd", 2.0, 0.5), ("jsd", 1.0, 0.5), ("jsd", 2.0, 0.1), ("jsd", 1.0, 0.9),
])
def test_each_loss_equals_the_hand_computation(loss, temperature, beta):
    value = distillation_loss(STUDENT, TEACHER, loss=loss, temperature=temperature, beta=beta)
    assert value.item() == pytest.approx(by_hand(loss, temperature, beta), rel=1e-5)


def test_jsd_at_its_ends_is_forward_and_reverse_kl():
    assert distillation_loss(STUDENT, TEACHER, loss="jsd", beta=0).item() == pytest.approx(by_hand("fkl"))
    assert distillation_loss(STUDENT, TEACHER, loss="jsd", beta=1).item() == pytest.approx(by_hand("rkl"))


def test_top_k_compares_k_tokens_and_the_mass_they_leave():
    k, temperature = 2, 2.0
    cached = top_k(TEACHER, k, temperature)
    value = distillation_loss(STUDENT, cached, loss="fkl", temperature=temperature).item()
    expected = []
    for s_row, t_row, ids in zip(STUDENT.tolist(), TEACHER.tolist(), cached.ids.tolist()):
        s, t = softmax(s_row, temperature), softmax(t_row, temperature)
        s_k = [s[i] for i in ids] + [1 - sum(s[i] for i in ids)]
        t_k = [t[i] for i in ids] + [1 - sum(t[i] for i in ids)]
        expected.append(kl(t_k, s_k))
    assert value == pytest.approx(sum(expected) / 2 * temperature ** 2, rel=1e-5)
    assert cached.ids[0].tolist() == [1, 0] and cached.ids[1, 0] == 2  # the likeliest first


@pytest.mark.parametrize("loss", ["fkl", "rkl", "jsd", "tvd"])
def test_top_k_of_the_whole_vocabulary_equals_the_live_teacher_with_the_same_gradients(loss):
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(6, 11, generator=torch.Generator().manual_seed(1))
    live = logits.clone().requires_grad_()
    cached = logits.clone().requires_grad_()
    distillation_loss(live, teacher, loss=loss, temperature=1.5).backward()
    distillation_loss(cached, top_k(teacher, 11, 1.5), loss=loss, temperature=1.5).backward()
    assert torch.allclose(live.grad, cached.grad, atol=1e-6)
    rest = teacher_with_rest(top_k(teacher, 11).logprobs)[:, -1].exp()
    assert rest.max().item() < 1e-6  # nothing is left out


def test_chunks_give_the_same_loss_and_gradients_as_one_pass():
    logits = torch.randn(37, 13, generator=torch.Generator().manual_seed(2))
    teacher = torch.randn(37, 13, generator=torch.Generator().manual_seed(3))
    whole, chunked = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    one = distillation_loss(whole, teacher, loss="jsd", chunk_rows=1000)
    many = distillation_loss(chunked, teacher, loss="jsd", chunk_rows=5)
    one.backward()
    many.backward()
    assert many.item() == pytest.approx(one.item(), rel=1e-6)
    assert torch.allclose(whole.grad, chunked.grad, atol=1e-7)


def test_identical_distributions_cost_nothing_and_bad_settings_are_refused():
    for loss in ("fkl", "rkl", "jsd", "tvd"):
        assert distillation_loss(TEACHER, TEACHER, loss=loss).item() == pytest.approx(0, abs=1e-6)
    for settings, message in [(dict(loss="kl"), "--loss kl: choose one of fkl, rkl, jsd, tvd"),
                              (dict(temperature=0), "--temperature 0"), (dict(beta=1.5), "--beta 1.5")]:
        with pytest.raises(SlmError, match=message):
            distillation_loss(STUDENT, TEACHER, **settings)
    with pytest.raises(SlmError, match="no token to distill on"):
        distillation_loss(STUDENT[:0], TEACHER[:0])
    assert isinstance(top_k(TEACHER, 99), TopK) and top_k(TEACHER, 99).ids.shape == (2, 4)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_kl_by_hand_has_the_loss_and_gradients_of_autograd(temperature):
    logits = torch.randn(9, 13, generator=torch.Generator().manual_seed(4))
    teacher = torch.randn(9, 13, generator=torch.Generator().manual_seed(5))
    teacher[0, 3] = -math.inf  # a token the teacher rules out adds nothing
    by_hand, autograd = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    fast = distillation_loss(by_hand, teacher, loss="fkl", temperature=temperature, chunk_rows=4)
    general = distillation_loss(autograd, teacher, loss="jsd", beta=0, temperature=temperature, chunk_rows=4)
    fast.backward()
    general.backward()
    assert fast.item() == pytest.approx(general.item(), rel=1e-6)
    assert torch.allclose(by_hand.grad, autograd.grad, atol=1e-7) and by_hand.grad.abs().sum() > 0
    # log-probabilities (what a teacher memory keeps) give the loss of the logits they come from
    log_probs = torch.log_softmax(teacher, dim=-1)
    assert distillation_loss(logits, log_probs, temperature=temperature).item() == pytest.approx(fast.item(), rel=1e-6)


def test_forward_kl_gradients_keep_the_logits_dtype_and_reach_a_teacher_that_asks():
    student = torch.randn(5, 7, generator=torch.Generator().manual_seed(6)).bfloat16().requires_grad_()
    teacher = torch.randn(5, 7, generator=torch.Generator().manual_seed(7)).requires_grad_()
    distillation_loss(student, teacher).backward()
    assert student.grad.dtype == torch.bfloat16 and teacher.grad is not None and teacher.grad.abs().sum() > 0
