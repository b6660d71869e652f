"""The one calibration runner every one-shot method shares (the GPTQ/SparseGPT pattern).

1. One forward pass of the untouched model records what each block is called
   with (masks, position embeddings: shared objects, so storing them is cheap)
   and the hidden states entering the first block of each stack.
2. Per block: hook its Linear layers, run the cached inputs through it so the
   method can `observe` each layer's inputs, `apply` the method to every
   layer, then run the compressed block again: its outputs are the next
   block's inputs. Peak memory is one block plus the cached activations.

A method is any object with `observe(name, module, inputs)` (the layer's full
module name; inputs as [tokens, in_features]) and `apply(name, module) -> dict`
(per-layer metrics), and optionally `prepare_block(prefix, block)`, called
between the two;
`needs_calibration = False` skips the forward passes (magnitude, RTN);
`parallel_apply = True` lets the layers of a block be compressed in parallel threads.

With a `device` (a GPU), the model stays on the CPU but for the block being
compressed: that block, its cached activations and the method's statistics
live on the device, so a model larger than the GPU's memory still compresses.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from slmkit.models.layers import block_lists, linear_layers
from slmkit.compress.obs import single_thread


class _StopForward(Exception):
    """Raised by the capture hook of the last block: nothing after it is needed."""


def _model_inputs(model: nn.Module, input_ids: torch.Tensor) -> dict:
    inputs = {"input_ids": input_ids}
    parameters = inspect.signature(model.forward).parameters
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = input_ids
    if "use_cache" in parameters:
        inputs["use_cache"] = False
    return inputs


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _output_hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def _capture_calls(model: nn.Module, stacks, batches: list[torch.Tensor]):
    """Per stack, per block, per batch: the (args, kwargs) it is called with.

    Only the first block of each stack keeps its hidden states; the others
    get theirs from the compressed block before them.
    """
    calls = {name: [[None] * len(batches) for _ in blocks] for name, blocks in stacks}
    last_stack, last_blocks = stacks[-1]
    handles = []
    batch_index = 0
    for stack_name, blocks in stacks:
        for index, block in enumerate(blocks):
            def record(module, args, kwargs, stack_name=stack_name, index=index):
                if index:
                    args, kwargs = _with_hidden(args, kwargs, None)
                kwargs = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "past_key_value")}
                calls[stack_name][index][batch_index] = (args, kwargs)
                if stack_name == last_stack and index == len(last_blocks) - 1:
                    raise _StopForward

            handles.append(block.register_forward_pre_hook(record, with_kwargs=True))
    # A decoder stack of T5 needs the encoder's real output: skip blocks in single-stack models only.
    skipping = _later_blocks_skipped(stacks[0][1]) if len(stacks) == 1 else nullcontext()
    try:
        with skipping:
            for batch_index, input_ids in enumerate(batches):
                try:
                    model(**_model_inputs(model, input_ids))
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return calls


@contextmanager
def _later_blocks_skipped(blocks: nn.ModuleList) -> Iterator[None]:
    """While calls are captured, every block after the first passes its input through untouched.

    Only the first block's hidden states are kept, so computing the others would be a wasted
    full forward pass. Each skipped block returns the first block's output with the hidden
    states swapped in, so whatever the model does between blocks sees the usual structure.
    """
    first_output = {}

    def keep_output(module, args, output):
        first_output["value"] = output

    def passthrough(*args, **kwargs):
        hidden, template = _hidden_of(args, kwargs), first_output["value"]
        if isinstance(template, (tuple, list)):
            return type(template)((hidden, *template[1:]))
        return hidden

    handle = blocks[0].register_forward_hook(keep_output)
    for block in blocks[1:]:
        block.forward = passthrough  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        handle.remove()
        for block in blocks[1:]:
            del block.forward


def _observer(method, name: str, shared: dict):
    def hook(module, inputs, output) -> None:  # returning None keeps the layer's output
        # Layers reading the same input (q/k/v, gate/up) get the same flat tensor object,
        # so a method can compute a statistic of it once (obs.Hessians does).
        if shared.get("raw") is not inputs[0]:
            shared["raw"], shared["flat"] = inputs[0], inputs[0].reshape(-1, inputs[0].shape[-1])
        method.observe(name, module, shared["flat"])
    return hook


def _apply_all(method, layers: dict[str, nn.Module]) -> dict[str, dict]:
    """Apply the method to each layer of a block; the layers are independent, so methods that
    say `parallel_apply` (the OBS sweeps: thousands of small single-threaded ops) run one layer
    per core in threads."""
    workers = min(len(layers), torch.get_num_threads())
    if workers <= 1 or not getattr(method, "parallel_apply", False):
        return {name: method.apply(name, layer) for name, layer in layers.items()}
    # torch's thread count is per thread under OpenMP: each worker sets its own to one.
    with single_thread(), ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {name: pool.submit(method.apply, name, layer) for name, layer in layers.items()}
        return {name: future.result() for name, future in futures.items()}


@contextmanager
def on_device(module: nn.Module, device: torch.device | None) -> Iterator[None]:
    """`module` on `device` for the block's work, then back where it was."""
    home = next(module.parameters()).device
    if device is None or device == home:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


@contextmanager
def _reston_device(model: nn.Module, stacks, device: torch.device | None) -> Iterator[None]:
    """Everything but the blocks (embeddings, rotary tables, final norm) on `device` while calibrating: the
    captured calls then hold masks and position embeddings made there. A model with several stacks (T5)
    runs them all in the capture and goes to the device whole."""
    home = next(model.parameters()).device
    if device is None or device == home:
        yield
        return
    blocks = [] if len(stacks) > 1 else [block for _, stack in stacks for block in stack]
    _move_except(model, device, blocks)
    try:
        yield
    finally:
        _move_except(model, home, blocks)


def _move_except(model: nn.Module, device: torch.device, skipped: list[nn.Module]) -> None:
    skipped_ids = {id(p) for block in skipped for p in [*block.parameters(), *block.buffers()]}
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) not in skipped_ids:
                tensor.data = tensor.data.to(device)


def run_sequential(model: nn.Module, method, calibration: torch.Tensor | None, *, batch_size: int = 8,
                   progress: Callable[[int, int], None] | None = None,
                   device: torch.device | None = None) -> dict[str, dict]:
    """Apply `method` to every Linear layer inside the model's blocks; returns metrics per layer.
    `device`: where each block is compressed (default: where the model is)."""
    stacks = block_lists(model)
    total_blocks = sum(len(blocks) for _, blocks in stacks)
    metrics: dict[str, dict] = {}
    if not getattr(method, "needs_calibration", True) or calibration is None:
        done = 0
        for stack_name, blocks in stacks:
            for index, block in enumerate(blocks):
                with on_device(block, device):
                    for name, layer in linear_layers(block).items():
                        full_name = f"{stack_name}.{index}.{name}"
                        metrics[full_name] = method.apply(full_name, layer)
                done += 1
                if progress:
                    progress(done, total_blocks)
        return metrics
    was_training = model.training
    model.eval()
    with _reston_device(model, stacks, device):
        batches = [batch.to(device or next(model.parameters()).device) for batch in calibration.split(batch_size)]
        with on_device(stacks[0][1][0], device):  # the first block runs in the capture
            calls = _capture_calls(model, stacks, batches)
        _compress_blocks(method, stacks, calls, metrics, device, total_blocks, progress)
    model.train(was_training)
    return metrics


@torch.no_grad()
def _compress_blocks(method, stacks, calls, metrics: dict, device, total_blocks: int, progress) -> None:
    done = 0
    for stack_name, blocks in stacks:
        hidden = [_hidden_of(*call).clone() for call in calls[stack_name][0]]
        for index, block in enumerate(blocks):
            with on_device(block, device):
                layers = {f"{stack_name}.{index}.{name}": layer for name, layer in linear_layers(block).items()}
                shared: dict = {}
                handles = [layer.register_forward_hook(_observer(method, name, shared))
                           for name, layer in layers.items()]
                block_calls = [_with_hidden(*call, h) for call, h in zip(calls[stack_name][index], hidden)]
                try:
                    for args, kwargs in block_calls:
                        block(*args, **kwargs)
                finally:
                    for handle in handles:
                        handle.remove()
                    shared.clear()
                if hasattr(method, "prepare_block"):  # block-level rewrites (AWQ's scale folding)
                    method.prepare_block(f"{stack_name}.{index}", block)
                metrics.update(_apply_all(method, layers))
                if index < len(blocks) - 1:  # the last block's outputs feed nothing
                    hidden = [_output_hidden(block(*args, **kwargs)) for args, kwargs in block_calls]
            done += 1
            if progress:
                progress(done, total_blocks)
