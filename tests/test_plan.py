"""The per-tensor type planner: within the budget, as good as the exhaustive optimum, monotone in the budget."""

import itertools
import random

import pytest

from slmkit.compress.plan import Candidate, choose, smallest_within
from slmkit.errors import SlmError

TYPES = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q6_K": 26.25, "q8_0": 34}  # bytes per 32 weights


def random_candidates(seed: int, tensors: int = 6) -> dict[str, list[Candidate]]:
    rng = random.Random(seed)
    candidates = {}
    for index in range(tensors):
        weights = rng.choice([32 * 64, 32 * 500, 32 * 3000])
        sensitivity = rng.uniform(0.1, 10)
        candidates[f"t{index}"] = [Candidate(name, int(weights / 32 * size), sensitivity * 2 ** -(size / 4))
                                   for name, size in TYPES.items()]
    return candidates


def exhaustive(candidates, budget):
    best = None
    for combo in itertools.product(*candidates.values()):
        if sum(c.bytes for c in combo) <= budget:
            loss = sum(c.loss for c in combo)
            best = loss if best is None else min(best, loss)
    return best


def total(plan, what):
    return sum(getattr(choice, what) for choice in plan.values())


@pytest.mark.parametrize("seed", range(4))
def test_the_plan_fits_and_is_as_good_as_the_exhaustive_optimum_up_to_rounding(seed):
    candidates = random_candidates(seed)
    smallest = sum(min(c.bytes for c in options) for options in candidates.values())
    largest = sum(max(c.bytes for c in options) for options in candidates.values())
    unit = -(-largest // (1 << 14))
    for budget in range(smallest + len(candidates) * unit, largest + 1, (largest - smallest) // 17):
        plan = choose(candidates, budget)
        assert total(plan, "bytes") <= budget
        assert exhaustive(candidates, budget) <= total(plan, "loss") + 1e-12
        # Rounding each tensor up to whole units costs at most one unit per tensor.
        assert total(plan, "loss") <= exhaustive(candidates, budget - len(candidates) * unit) + 1e-12


def test_a_larger_budget_never_predicts_more_loss():
    candidates = random_candidates(7, tensors=40)
    smallest = sum(min(c.bytes for c in options) for options in candidates.values())
    largest = sum(max(c.bytes for c in options) for options in candidates.values())
    losses = [total(choose(candidates, budget), "loss") for budget in range(smallest, largest + 5000, 997)]
    assert all(later <= earlier for earlier, later in zip(losses, losses[1:]))
    assert losses[-1] == pytest.approx(sum(min(c.loss for c in options) for options in candidates.values()))


def test_the_smallest_plan_within_a_loss_bound():
    candidates = random_candidates(3)
    largest = sum(max(c.bytes for c in options) for options in candidates.values())
    budget = largest * 3 // 4
    bound = total(choose(candidates, budget), "loss")
    plan = smallest_within(candidates, bound)
    assert total(plan, "loss") <= bound
    assert total(plan, "bytes") <= budget
    with pytest.raises(SlmError, match="no mix of these types keeps the predicted loss within"):
        smallest_within(candidates, 0.0)


def test_a_budget_below_the_smallest_file_is_refused():
    candidates = random_candidates(1)
    smallest = sum(min(c.bytes for c in options) for options in candidates.values())
    with pytest.raises(SlmError, match="below the smallest file these types make"):
        choose(candidates, smallest - 1)
