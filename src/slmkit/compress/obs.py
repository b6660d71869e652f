"""The column sweep SparseGPT and GPTQ share (Optimal Brain Surgeon, lazy batch updates).

Columns are fixed one at a time, left to right; the error each fixed column
makes is spread onto the columns still to come through the inverse Hessian,
so later columns compensate. Updates to columns outside the current block are
batched into one matrix product per block (GPTQ's "lazy batch" trick).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class Hessians:
    """Per layer, the sum of X^T X over its calibration inputs (shape is all that matters: damping is relative).

    Layers that read the same input (q/k/v, gate/up) get it as the same tensor object from the
    runner, so the product is computed once per input, not once per layer.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self._last_input: torch.Tensor | None = None
        self._last_product: torch.Tensor | None = None

    def add(self, name: str, inputs: torch.Tensor) -> None:
        if inputs is not self._last_input:
            inputs32 = inputs.float()
            self._last_input, self._last_product = inputs, inputs32.t() @ inputs32
        if name in self.sums:
            self.sums[name] += self._last_product
        else:
            self.sums[name] = self._last_product.clone()

    def pop(self, name: str) -> torch.Tensor:
        self._last_input = self._last_product = None
        return self.sums.pop(name)


def inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian; inputs never seen get zero weight."""
    hessian = hessian.clone()
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    hessian += damp * torch.mean(torch.diag(hessian)) * torch.eye(len(hessian), device=hessian.device)
    # If flip(H) = L L^T then H^-1 = U^T U with U = flip(L^-1): one Cholesky and one triangular
    # solve, instead of forming H^-1 and factoring it again (torch's cholesky_inverse is slow on CPU).
    lower = torch.linalg.cholesky(torch.flip(hessian, dims=(0, 1)))
    inverse_lower = torch.linalg.solve_triangular(lower, torch.eye(len(hessian), device=hessian.device), upper=False)
    return torch.flip(inverse_lower, dims=(0, 1))


@contextmanager
def single_thread() -> Iterator[None]:
    """The sweep is thousands of tiny ops: splitting each across threads costs more than it saves,
    and on a busy machine every op waits for a descheduled worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def obs_sweep(weight: torch.Tensor, hinv: torch.Tensor, block_size: int,
              start_block: Callable[[torch.Tensor, torch.Tensor, int], None],
              fix_column: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]) -> torch.Tensor:
    """Rewrite `weight` ([rows, cols], in place) column by column.

    `start_block(block, block_hinv, start)` sees each block before its sweep (to pick masks);
    `fix_column(block, block_hinv, column_in_block, column)` returns the column's final values.
    """
    with single_thread():
        return _sweep(weight, hinv, block_size, start_block, fix_column)


def _sweep(weight, hinv, block_size, start_block, fix_column) -> torch.Tensor:
    cols = weight.shape[1]
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, block_hinv = weight[:, start:end].clone(), hinv[start:end, start:end]
        errors = torch.zeros_like(block)
        start_block(block, block_hinv, start)
        for column in range(end - start):
            fixed = fix_column(block, block_hinv, column, start + column)
            error = (block[:, column] - fixed) / block_hinv[column, column]
            block[:, column:].addr_(error, block_hinv[column, column:], alpha=-1)
            block[:, column] = fixed
            errors[:, column] = error
        weight[:, start:end] = block
        weight[:, end:] -= errors @ hinv[start:end, end:]
    return weight
