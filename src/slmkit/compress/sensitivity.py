"""How much each weight matrix's rounding error costs in the model's output, to choose block types per tensor.

A perturbation dW of one matrix moves the model's next-token distribution by, to second order, a KL divergence
of 1/2 dy^T F dy per token, where dy = dW x is the change of the matrix's output and F the Fisher information of
that output. With F's diagonal (the mean squared gradient of log p(y) for y drawn from the model itself) and the
inputs' second moments (llama.cpp's imatrix) taken as independent, the mean KL per token a tensor's rounding adds is

    1/2 * sum_kj rows_k * columns_j * dW_kj^2,   rows = E[g_k^2] over the output, columns = E[x_j^2] over the input,

and the tensors' contributions add up. One forward and backward pass per calibration batch measures every
tensor at once; the predicted loss of any candidate grid is then that sum over its rounding error. An embedding
is a lookup: its rows are the token ids seen (their share of the text, smoothed: the calibration text is short
and the model will read others), its columns the squared gradient of its output. A matrix used twice (an
embedding tied to the output head) adds both uses.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from slmkit.models.layers import is_linear, weight_matrix

UNSEEN_TOKEN_SHARE = 0.5  # pseudo-count per vocabulary entry: the calibration text never shows most tokens


@dataclass
class Use:
    """One way the model reads a matrix [out, in]: per-row and per-column weights of its squared error."""

    rows: torch.Tensor
    columns: torch.Tensor


@dataclass
class Sensitivity:
    """Every use of one weight matrix (as [out, in], weight_matrix's orientation), and the mean square of each
    input column where a matmul reads it (llama.cpp's imatrix entry; None for an embedding only looked up)."""

    uses: list[Use]
    input_squares: torch.Tensor | None = None

    @torch.no_grad()
    def predicted_kl(self, delta: torch.Tensor) -> float:
        """The mean KL per token a change `delta` of this matrix is predicted to add."""
        squared = delta.float().pow(2)
        return 0.5 * sum(float(use.rows @ squared @ use.columns) for use in self.uses)

    @property
    def importance(self) -> torch.Tensor:
        """The per-column weights a block type's scales are fitted with: the output head's inputs (llama.cpp's
        imatrix) where the matrix is one, else the first use's."""
        return self.uses[-1].columns


def measure_sensitivity(model: nn.Module, ids: torch.Tensor, *, batch_size: int = 4, seed: int = 0,
                        progress=None) -> dict[str, Sensitivity]:
    """Per weight matrix of every linear layer and embedding (keyed by parameter name; a tied matrix once), its
    Sensitivity on the calibration token ids [sequences, length]."""
    sums = _Sums(model)
    generator = torch.Generator().manual_seed(seed)
    parameters_trainable = [parameter.requires_grad for parameter in model.parameters()]
    model.requires_grad_(False)  # gradients of the activations only
    try:
        for start in range(0, len(ids), batch_size):
            batch = ids[start:start + batch_size]
            with sums.hooked():
                logits = model(input_ids=batch, use_cache=False).logits.float()
                drawn = torch.multinomial(logits.detach().softmax(-1).flatten(0, 1), 1, generator=generator)
                torch.log_softmax(logits, -1).flatten(0, 1).gather(1, drawn).sum().backward()
            sums.tokens += batch.numel()
            if progress:
                progress(min(start + batch_size, len(ids)), len(ids))
    finally:
        for parameter, trainable in zip(model.parameters(), parameters_trainable):
            parameter.requires_grad_(trainable)
    return sums.sensitivities()


class _Sums:
    """Running sums of squared inputs, squared output gradients and token counts, per module."""

    def __init__(self, model: nn.Module):
        self.model, self.tokens = model, 0
        self.names = {id(parameter): name for name, parameter in model.named_parameters()}
        self.modules = [(name, module) for name, module in model.named_modules()
                        if is_linear(module) or isinstance(module, nn.Embedding)]
        self.inputs, self.gradients = defaultdict(float), defaultdict(float)

    @contextmanager
    def hooked(self):
        handles = [module.register_forward_hook(self._forward_hook(name)) for name, module in self.modules]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _forward_hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(module, nn.Embedding):
                counts = torch.bincount(inputs[0].flatten(), minlength=module.num_embeddings).float()
                self.inputs[name] = self.inputs[name] + counts
                if not output.requires_grad:  # the graph starts here: no parameter is trained
                    output.requires_grad_(True)
            else:
                self.inputs[name] = self.inputs[name] + inputs[0].detach().float().pow(2).flatten(0, -2).sum(0)
            if output.requires_grad:
                output.register_hook(self._gradient_hook(name))
            return output

        return hook

    def _gradient_hook(self, name: str):
        def hook(gradient):
            self.gradients[name] = self.gradients[name] + gradient.detach().float().pow(2).flatten(0, -2).sum(0)

        return hook

    def sensitivities(self) -> dict[str, Sensitivity]:
        found: dict[str, Sensitivity] = {}
        for name, module in self.modules:
            if name not in self.gradients:
                continue  # not on the path to the logits (an encoder-only head's pooler)
            gradient = self.gradients[name] / self.tokens
            if isinstance(module, nn.Embedding):
                share = (self.inputs[name] + UNSEEN_TOKEN_SHARE) / (self.tokens + UNSEEN_TOKEN_SHARE
                                                                     * module.num_embeddings)
                use = Use(rows=share, columns=gradient)
            key = self.names[id(module.weight)]
            found.setdefault(key, Sensitivity([]))
            if not isinstance(module, nn.Embedding):
                use = Use(rows=gradient, columns=self.inputs[name] / self.tokens)
                found[key].input_squares = use.columns
            found[key].uses.append(use)
        return found

