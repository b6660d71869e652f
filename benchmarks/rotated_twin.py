"""SmolLM2 with weights off every quantization grid: the same function, every matrix a dense mix of the original's.

The packaged SmolLM2-135M's float weights are a dequantized Q4_1 file, so a grid that holds Q4_1's values is
nearly lossless on it by construction. This twin folds each RMSNorm's scale into the linear layers that read it
and rotates the residual stream by a random orthogonal matrix Q (as QuaRot and SpinQuant do): RMSNorm commutes
with an orthogonal rotation, so with

    embedding E -> E Q;  q/k/v, gate/up W -> W diag(g) Q;  o/down W -> Q^T W;  head H -> H diag(g_final) Q

(the head untied from the embedding, every norm scale 1) the model computes the same logits to float rounding,
and no weight sits on a grid any more. Used by benchmarks/gguf_menu.py to report every quantizer on a model with
continuous weights beside the packaged one.

    .venv/bin/python benchmarks/rotated_twin.py --out benchmarks/build/smollm2-rotated
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import slmkit


def rotate(model, seed: int) -> None:
    """Fold the norms and rotate the residual stream of a Llama-family model in place (computed in float64)."""
    hidden = model.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=generator, dtype=torch.float64))
    body = model.model

    def set_(parameter, value):
        parameter.data = value.to(torch.float32).contiguous()

    def reading(linear, norm):  # a linear that reads the normed, rotated stream
        set_(linear.weight, linear.weight.double() * norm.weight.double() @ rotation)

    def writing(linear):  # a linear whose output adds to the stream
        set_(linear.weight, rotation.T @ linear.weight.double())

    head = body.embed_tokens.weight.double() if model.config.tie_word_embeddings else model.lm_head.weight.double()
    model.lm_head.weight = torch.nn.Parameter(head.float())  # untied: the head gets its own copy
    set_(body.embed_tokens.weight, body.embed_tokens.weight.double() @ rotation)
    for layer in body.layers:
        attention, mlp = layer.self_attn, layer.mlp
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
            reading(linear, layer.input_layernorm)
        writing(attention.o_proj)
        for linear in (mlp.gate_proj, mlp.up_proj):
            reading(linear, layer.post_attention_layernorm)
        writing(mlp.down_proj)
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            set_(norm.weight, torch.ones(hidden, dtype=torch.float64))
    reading(model.lm_head, body.norm)
    set_(body.norm.weight, torch.ones(hidden, dtype=torch.float64))
    model.config.tie_word_embeddings = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "build" / "smollm2-rotated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lm = slmkit.load(args.model)
    probe = torch.tensor([lm.tokenizer("The capital of France is Paris, and the river is").input_ids])
    with torch.no_grad():
        before = lm.model(probe).logits
        rotate(lm.model, args.seed)
        after = lm.model(probe).logits
    slmkit.save(lm, args.out, stage="rotated-twin", config={"seed": args.seed, "of": args.model}, force=True)
    print(f"{args.out}: max |logit change| {float((after - before).abs().max()):.2e} "
          f"(logits span {float(before.abs().max()):.1f})")


if __name__ == "__main__":
    main()
