"""Structured pruning: remove whole blocks, FFN channels and attention heads.

The result is a smaller *dense* model with a smaller config, which plain
transformers loads and which really runs faster.

- depth: drop the blocks that change their input least (ShortGPT's Block
  Influence, Men et al. 2024, arXiv:2403.03853: 1 - mean cosine(input, output)).
- width: keep the FFN channels and attention heads with the largest mean
  activation magnitude on calibration data (Minitron, Muralidharan et al. 2024,
  arXiv:2407.14679). Heads are removed within each GQA group, so every key/value
  head keeps the same number of query heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from slmkit.models.architectures import roles_of, supporting
from slmkit.models.layers import block_lists
from slmkit.errors import SlmError
from slmkit.models.kinds import head_dim

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass
class StructuredConfig:
    """What to remove. Any combination of the three; `target_params` picks FFN width, then depth.

    Args:
        depth: number of blocks to remove.
        ffn: FFN channels to keep in every block.
        heads: attention (query) heads to keep in every block; a multiple of the key/value heads.
        target_params: total parameters wanted; FFN width shrinks first (to 25% at most), then depth.
    """

    depth: int = 0
    ffn: int | None = None
    heads: int | None = None
    target_params: int | None = None

    def __post_init__(self):
        if self.depth < 0 or (self.ffn is not None and self.ffn < 1) or (self.heads is not None and self.heads < 1):
            raise SlmError("--depth must be >= 0 and --width values positive")
        if self.target_params is not None and (self.target_params < 1 or self.depth or self.ffn or self.heads):
            raise SlmError("--target-params is used alone (not with --depth/--width) and must be positive")
        if not (self.depth or self.ffn or self.heads or self.target_params):
            raise SlmError("nothing to prune: give --depth, --width or --target-params")

    def to_dict(self) -> dict:
        return {"method": "structured", **asdict(self)}


def _text_config(model):
    return model.config.get_text_config()


def _decoder_blocks(model) -> tuple[str, nn.ModuleList]:
    stacks = block_lists(model)
    if len(stacks) != 1 or getattr(model.config, "is_encoder_decoder", False):
        raise SlmError("structured pruning supports single-stack models (decoders and encoders), not "
                       f"{model.config.model_type}")
    return stacks[0]


def _module(block: nn.Module, path: str) -> nn.Module:
    return block.get_submodule(path)


@torch.no_grad()
def _collect(model, calibration: torch.Tensor, blocks: nn.ModuleList, adapter: dict | None, batch_size: int = 8):
    """Block influence per block; mean |activation| per FFN channel and per query head, per block."""
    influence = torch.zeros(len(blocks), dtype=torch.float64)
    ffn_scores = [0.0] * len(blocks)
    head_scores = [0.0] * len(blocks)
    handles = []
    for index, block in enumerate(blocks):
        def influence_hook(module, args, kwargs, output, index=index):
            before = (args[0] if args else kwargs["hidden_states"]).flatten(0, -2)
            after = (output[0] if isinstance(output, (tuple, list)) else output).flatten(0, -2)
            influence[index] += (1 - nn.functional.cosine_similarity(before, after, dim=-1)).double().sum().cpu()

        handles.append(block.register_forward_hook(influence_hook, with_kwargs=True))
    if adapter:
        for index, block in enumerate(blocks):
            def ffn_hook(module, inputs, output, index=index):
                ffn_scores[index] = ffn_scores[index] + inputs[0].abs().flatten(0, -2).double().sum(0).cpu()

            def head_hook(module, inputs, output, index=index):
                per_head = inputs[0].flatten(0, -2).unflatten(-1, (-1, head_dim(_text_config(model))))
                head_scores[index] = head_scores[index] + per_head.double().norm(dim=-1).sum(0).cpu()

            handles.append(_module(block, adapter["ffn_out"]).register_forward_hook(ffn_hook))
            handles.append(_module(block, adapter["o"]).register_forward_hook(head_hook))
    try:
        for batch in calibration.split(batch_size):
            model(input_ids=batch.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return influence, ffn_scores, head_scores


def _keep_rows(linear: nn.Linear, keep: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[keep].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[keep].clone())
    linear.out_features = len(keep)


def _keep_columns(linear: nn.Linear, keep: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[:, keep].clone())
    linear.in_features = len(keep)


def _prune_ffn(block, adapter, scores: torch.Tensor, keep_count: int) -> list[int]:
    keep = torch.sort(torch.topk(scores, keep_count).indices).values
    for name in adapter["ffn_in"]:
        _keep_rows(_module(block, name), keep)
    _keep_columns(_module(block, adapter["ffn_out"]), keep)
    return keep.tolist()


def _prune_heads(block, adapter, scores: torch.Tensor, heads: int, kv_heads: int,
                 head_dim: int) -> tuple[list[int], int]:
    """Keep the best query heads; returns the kept heads and the key/value heads left.

    Multi-head attention (one key/value head per query head) drops whole heads.
    Grouped-query attention keeps every key/value head and the best heads/kv_heads
    query heads of each group, so the groups stay equal.
    """
    multi_head = kv_heads == len(scores)
    if multi_head:
        kept_heads = torch.sort(torch.topk(scores, heads).indices).values.tolist()
        kv_heads = heads
    else:
        grouped = scores.view(kv_heads, -1)
        kept_heads = []
        for group in range(kv_heads):
            best = torch.sort(torch.topk(grouped[group], heads // kv_heads).indices).values
            kept_heads += (group * grouped.shape[1] + best).tolist()
    channels = torch.tensor([h * head_dim + d for h in kept_heads for d in range(head_dim)])
    for name in ("q", "k", "v") if multi_head else ("q",):
        _keep_rows(_module(block, adapter[name]), channels)
    _keep_columns(_module(block, adapter["o"]), channels)
    attention = _module(block, adapter["o"].rsplit(".", 1)[0])
    for name, value in (("num_heads", heads), ("num_attention_heads", heads), ("num_key_value_heads", kv_heads),
                        ("num_key_value_groups", heads // kv_heads)):
        if hasattr(attention, name):
            setattr(attention, name, value)
    return kept_heads, kv_heads


def _ffn_params_per_channel(block, adapter) -> int:
    hidden = _module(block, adapter["ffn_out"]).out_features
    per_channel = hidden * (len(adapter["ffn_in"]) + 1)
    return per_channel + sum(1 for name in adapter["ffn_in"] if _module(block, name).bias is not None)


# --target-params rounds the FFN width down to a multiple of this: GGUF's 4/5/8-bit blocks and GPTQ groups of
# 32 need whole blocks of 32 columns (an FFN of 887 could not become q4_0), and CPU kernels prefer them.
WIDTH_ALIGNMENT = 32


def _plan_target(model, blocks, adapter, target: int) -> tuple[int | None, int]:
    """(FFN width, blocks to drop) that bring the total to about `target` parameters."""
    total = sum(p.numel() for p in model.parameters())
    if target >= total:
        raise SlmError(f"--target-params {target:,} is not below the model's {total:,} parameters")
    if adapter is None:
        per_block = sum(p.numel() for p in blocks[0].parameters())
        return None, min(len(blocks) - 1, -(-(total - target) // per_block))
    intermediate = _module(blocks[0], adapter["ffn_out"]).in_features
    per_channel = _ffn_params_per_channel(blocks[0], adapter) * len(blocks)
    floor = max(1, intermediate // 4)
    width = max(floor, intermediate - -(-(total - target) // per_channel))
    aligned = width // WIDTH_ALIGNMENT * WIDTH_ALIGNMENT
    if intermediate % WIDTH_ALIGNMENT == 0 and aligned >= floor:
        width = aligned
    remaining = total - (intermediate - width) * per_channel
    depth = 0
    if remaining > target:
        removed_per_block = (intermediate - width) * (per_channel // len(blocks))
        per_block = sum(p.numel() for p in blocks[0].parameters()) - removed_per_block
        depth = min(len(blocks) - 1, -(-(remaining - target) // per_block))
    return width, depth


def prune_structured(model, config: StructuredConfig, calibration: torch.Tensor) -> dict:
    """Shrink `model` in place and update its config; returns what was removed and why.

    Example: `prune_structured(lm.model, StructuredConfig(depth=4), calibration_ids(lm, "wiki.txt"))`,
    then `slmkit.save(lm.model, "out/short", lm.tokenizer)`: transformers loads it as is.
    """
    text_config = _text_config(model)
    _, blocks = _decoder_blocks(model)
    adapter = roles_of(model)
    wants_width = config.ffn is not None or config.heads is not None
    if wants_width and adapter is None:
        raise SlmError(f"width pruning supports {', '.join(supporting('roles'))}, not {text_config.model_type}; "
                       "--depth works for every decoder")
    ffn, heads, depth = config.ffn, config.heads, config.depth
    if config.target_params is not None:
        ffn, depth = _plan_target(model, blocks, adapter, config.target_params)
    if depth >= len(blocks):
        raise SlmError(f"--depth {depth} would remove all {len(blocks)} blocks")
    kv_heads = getattr(text_config, "num_key_value_heads", None) or getattr(text_config, "num_attention_heads", 0)
    multi_head = kv_heads == getattr(text_config, "num_attention_heads", 0)
    if heads is not None:
        if heads >= text_config.num_attention_heads or (not multi_head and heads % kv_heads):
            raise SlmError(f"--width heads={heads} must be below {text_config.num_attention_heads} and a multiple "
                           f"of the {kv_heads} key/value heads (GQA groups stay whole)")
    if ffn is not None:
        intermediate = _module(blocks[0], adapter["ffn_out"]).in_features
        if ffn >= intermediate:
            raise SlmError(f"--width ffn={ffn} must be below the current {intermediate} channels")
    model.eval()
    influence, ffn_scores, head_scores = _collect(model, calibration, blocks, adapter if (ffn or heads) else None)
    head_size = head_dim(text_config)
    kept_channels, kept_heads = [], []
    if ffn is not None:
        kept_channels = [_prune_ffn(block, adapter, scores, ffn) for block, scores in zip(blocks, ffn_scores)]
        text_config.intermediate_size = ffn
    if heads is not None:
        for block, scores in zip(blocks, head_scores):
            block_heads, kept_kv_heads = _prune_heads(block, adapter, scores, heads, kv_heads, head_size)
            kept_heads.append(block_heads)
        text_config.head_dim = head_size  # no longer hidden_size / heads
        text_config.num_attention_heads = heads
        if hasattr(text_config, "num_key_value_heads"):
            text_config.num_key_value_heads = kept_kv_heads
    removed = sorted(torch.topk(influence, depth, largest=False).indices.tolist()) if depth else []
    if removed:
        keep_blocks(model, [index for index in range(len(blocks)) if index not in removed])
    return {
        "removed_blocks": removed,
        "block_influence": [round(float(v), 6) for v in influence / max(1, calibration.numel())],
        "ffn": ffn, "heads": heads,
        "parameters": sum(p.numel() for p in model.parameters()),
        # per original block, before blocks were removed
        "kept_ffn_channels": kept_channels, "kept_heads": kept_heads,
    }


def keep_blocks(model, kept: list[int]) -> None:
    """Keep only the blocks at indices `kept` (ascending) of a single-stack model, in place: the config's layer
    count and per-layer lists, and each attention's cache slot (`layer_idx`), follow."""
    stack_name, blocks = _decoder_blocks(model)
    text_config = _text_config(model)
    new_blocks = nn.ModuleList(blocks[index] for index in kept)
    parent_name, _, attribute = stack_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, new_blocks)
    for new_index, block in enumerate(new_blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    for key in LAYER_COUNT_KEYS:
        if hasattr(text_config, key):
            setattr(text_config, key, len(kept))
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = [text_config.layer_types[index] for index in kept]
