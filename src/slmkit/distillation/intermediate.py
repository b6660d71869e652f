"""Distilling what a teacher computes inside, not only what it outputs: hidden states (TinyBERT, Jiao et al.
2020) and self-attention distributions (TinyBERT; MiniLM, Wang et al. 2020).

Layers are numbered as transformers' `hidden_states` are: 0 is the embeddings' output, i the output of block i
(for Llama-style decoders the last one is taken after the final norm, the others are the raw residual stream:
pair last with last). A layer map pairs student layers with teacher layers, `s:t,...`; `auto` pairs student
block i with teacher block round(i * T / S) (at least 1) for i = 1..S, so the last block meets the last
(TinyBERT's uniform mapping); the embeddings are paired only when the map names 0.

    hidden loss     mse: the mean squared difference of each pair's states; cosine: 1 - their cosine per token.
                    When the widths differ, each pair has a learned linear projection from the student's width
                    to the teacher's (TinyBERT's W_h); it trains with the student and is not saved with it.
    attention loss  KL(teacher || student) between each pair's attention distributions, head by head, over
                    every query token (blocks only: layer 0 has no attention). Both need the same head count. The
                    student's dropout on its attention weights is turned off for the run (MiniLM compares the
                    probabilities themselves; dropout would zero some and rescale the rest).

Only real tokens count: padding (attention_mask 0) is left out of both losses; packed rows have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slmkit.distillation.config import parse_layer_map
from slmkit.errors import SlmError

# The attribute an attention module keeps its weights' dropout in: a float (Llama, Qwen2, Gemma, T5) or an
# nn.Dropout (BERT, DistilBERT, MobileBERT: `dropout`; GPT-2: `attn_dropout`).
ATTENTION_DROPOUTS = ("attention_dropout", "attn_dropout", "dropout")


@dataclass(frozen=True)
class LayerPairs:
    """The resolved pairs, and the widths the projections map between."""

    pairs: tuple[tuple[int, int], ...]
    student_width: int
    teacher_width: int

    @property
    def needs_projection(self) -> bool:
        return self.student_width != self.teacher_width


def resolve_layer_map(text: str, student_config, teacher_config) -> LayerPairs:
    """The pairs `text` names (or `auto`'s), checked against both models' layer counts."""
    student, teacher = student_config.get_text_config(), teacher_config.get_text_config()
    student_blocks, teacher_blocks = student.num_hidden_layers, teacher.num_hidden_layers
    if text.strip() == "auto":
        pairs = [(i, max(1, round(i * teacher_blocks / student_blocks))) for i in range(1, student_blocks + 1)]
    else:
        pairs = parse_layer_map(text)
        for side, blocks, index in [("student", student_blocks, s) for s, _ in pairs] + \
                                   [("teacher", teacher_blocks, t) for _, t in pairs]:
            if index > blocks:
                raise SlmError(f"--layer-map: the {side} has layers 0..{blocks} (0 is the embeddings); "
                               f"{index} is not one")
    return LayerPairs(tuple(pairs), student.hidden_size, teacher.hidden_size)


def check_attention(student_config, teacher_config, layers: LayerPairs) -> None:
    student, teacher = student_config.get_text_config(), teacher_config.get_text_config()
    if student.num_attention_heads != teacher.num_attention_heads:
        raise SlmError(f"--attention-loss compares attention head by head: the student has "
                       f"{student.num_attention_heads} heads and the teacher {teacher.num_attention_heads}")
    if not any(s > 0 and t > 0 for s, t in layers.pairs):
        raise SlmError("--attention-loss: the layer map pairs no blocks (layer 0 is the embeddings)")


def without_attention_dropout(model: torch.nn.Module) -> int:
    """Turn off the dropout on attention weights in every attention module of `model` (the saved config keeps
    its value); returns how many were changed."""
    changed = 0
    for module in model.modules():
        if "Attention" not in type(module).__name__:
            continue
        for name in ATTENTION_DROPOUTS:
            value = getattr(module, name, None)
            if isinstance(value, torch.nn.Dropout) and value.p > 0:
                value.p = 0.0
                changed += 1
            elif isinstance(value, float) and value > 0:
                setattr(module, name, 0.0)
                changed += 1
    return changed


def projections(layers: LayerPairs) -> torch.nn.ModuleList | None:
    """One student-width -> teacher-width linear map per pair, or None when the widths agree."""
    if not layers.needs_projection:
        return None
    return torch.nn.ModuleList(torch.nn.Linear(layers.student_width, layers.teacher_width) for _ in layers.pairs)


def _token_mask(states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[batch, tokens] bool: the real tokens."""
    if attention_mask is None:
        return torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
    return attention_mask.to(states.device).bool()


def hidden_loss(kind: str, student_states, teacher_states, layers: LayerPairs,
                maps: torch.nn.ModuleList | None, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over pairs of the per-token loss between the (projected) student states and the teacher's."""
    total = 0.0
    for index, (s, t) in enumerate(layers.pairs):
        student = student_states[s].float()
        teacher = teacher_states[t].float().to(student.device)
        if maps is not None:
            student = maps[index](student)
        keep = _token_mask(student, attention_mask)
        student, teacher = student[keep], teacher[keep]
        if kind == "mse":
            total = total + F.mse_loss(student, teacher)
        else:
            total = total + (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    return total / len(layers.pairs)


def attention_loss(student_attentions, teacher_attentions, layers: LayerPairs,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over block pairs, heads and real query tokens of KL(teacher || student) over the keys."""
    blocks = [(s, t) for s, t in layers.pairs if s > 0 and t > 0]  # check_attention: at least one
    total = 0.0
    for s, t in blocks:
        student = student_attentions[s - 1].float()  # [batch, heads, queries, keys]
        teacher = teacher_attentions[t - 1].float().to(student.device)
        keep = _token_mask(student[:, 0, :, 0], attention_mask)  # real query tokens
        # Keys the mask hides have probability 0 on both sides: the clamp keeps their log finite, and
        # kl_div's 0 * log 0 = 0 leaves them out.
        log_student = student.clamp_min(torch.finfo(torch.float32).tiny).log()
        per_query = F.kl_div(log_student, teacher, reduction="none").sum(-1)  # [batch, heads, queries]
        total = total + per_query.permute(0, 2, 1)[keep].mean()
    return total / len(blocks)
