"""A block type per tensor under a budget: the multiple-choice knapsack of mixed-precision GGUF files.

Each tensor offers candidates (a block type, the bytes it takes in the file, the loss it is predicted to add);
`choose` picks one per tensor with the least total predicted loss whose bytes fit the budget, and
`smallest_within` the fewest bytes whose predicted loss stays within a bound. Both solve the knapsack exactly by
dynamic programming over bytes counted in fixed units (a unit is a 1/RESOLUTION share of the largest file the
candidates can make, and every candidate's bytes are rounded up to whole units), so the file never exceeds the
budget, and a larger budget can only lower the predicted loss (the plans it admits include the smaller
budget's). Greedy choice by loss per byte, as mixed-precision tools often do, can leave a large tensor's upgrade
unbought and is not monotone in the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slmkit.errors import SlmError

RESOLUTION = 1 << 14  # units in the largest possible file: rounding costs at most tensors/RESOLUTION of it


@dataclass(frozen=True)
class Candidate:
    """One way to store a tensor: a block type, its bytes in the file, its predicted loss (e.g. added KL)."""

    type: str
    bytes: int
    loss: float


Candidates = dict[str, list[Candidate]]


def choose(candidates: Candidates, budget: int) -> dict[str, Candidate]:
    """The choice per tensor with the least summed loss whose bytes sum to at most `budget`."""
    smallest = {name: min(options, key=lambda option: (option.bytes, option.loss))
                for name, options in candidates.items()}
    if budget < sum(option.bytes for option in smallest.values()):
        raise SlmError(f"a budget of {budget} bytes is below the smallest file these types make "
                       f"({sum(option.bytes for option in smallest.values())} bytes of tensors)")
    table = _Table(candidates)
    units = budget // table.unit
    if units < table.fewest_units:  # within the rounding of the smallest file: only it fits
        return smallest
    return table.plan(min(units, len(table.best) - 1))


def smallest_within(candidates: Candidates, max_loss: float) -> dict[str, Candidate]:
    """The choice per tensor with the fewest bytes whose summed loss is at most `max_loss`."""
    table = _Table(candidates)
    within = np.flatnonzero(table.best <= max_loss)
    if not len(within):
        raise SlmError(f"no mix of these types keeps the predicted loss within {max_loss}; the least it can be is "
                       f"{table.best[-1]:.4g}")
    return table.plan(int(within[0]))


class _Table:
    """The dynamic programme: best[u] is the least loss of any choice using at most u units; `picks` keeps, per
    tensor and budget, the candidate taken, to walk the choice back from a budget."""

    def __init__(self, candidates: Candidates):
        if any(not options for options in candidates.values()):
            raise SlmError("every tensor needs at least one candidate type")
        self.names = list(candidates)
        self.options = [sorted(candidates[name], key=lambda option: (option.bytes, option.loss))
                        for name in self.names]
        largest = sum(max(option.bytes for option in options) for options in self.options)
        self.unit = max(1, math.ceil(largest / RESOLUTION))
        self.costs = [[math.ceil(option.bytes / self.unit) for option in options] for options in self.options]
        self.fewest_units = sum(min(costs) for costs in self.costs)
        size = sum(max(costs) for costs in self.costs) + 1
        self.best = np.zeros(size)  # no tensor yet: nothing lost at any budget
        self.picks = np.zeros((len(self.names), size), dtype=np.int16)
        for index, (options, costs) in enumerate(zip(self.options, self.costs)):
            self.best, self.picks[index] = _add_tensor(self.best, options, costs)

    def plan(self, units: int) -> dict[str, Candidate]:
        chosen, left = {}, units
        for index in reversed(range(len(self.names))):
            pick = int(self.picks[index, left])
            chosen[self.names[index]] = self.options[index][pick]
            left -= self.costs[index][pick]
        return {name: chosen[name] for name in self.names}


def _add_tensor(best: np.ndarray, options: list[Candidate], costs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One more tensor: for every budget u, the least loss of the tensors so far plus this one's candidate."""
    merged = np.full(len(best), np.inf)
    picks = np.zeros(len(best), dtype=np.int16)
    for pick, (option, cost) in enumerate(zip(options, costs)):
        shifted = np.full(len(best), np.inf)
        shifted[cost:] = best[:len(best) - cost] + option.loss
        better = shifted < merged
        merged[better], picks[better] = shifted[better], pick
    return merged, picks

