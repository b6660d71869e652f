"""Which QAT variants help on 2 cores: each trained from the same GPTQ start on the same data-free sequences.

In one process, on smollm2-135m-instruct: the float model samples --samples x --seq-len tokens itself (as
`slm quantize --method qat` does without --data; cached), GPTQ puts it on q4_0's grid once, then each
variant trains a copy for --steps steps and is measured on what `slm export --quant q4_0` would write (its
q4_0 layers, the embedding/output matrix at q8_0):

  default        latent weights and scales trained together (QATConfig's defaults)
  scales-first   the first third of the steps train the scales alone (EfficientQAT's second phase)
  weights-only   the scales held at GPTQ's (is learning each block's clipping range worth it?)
  edges-q8_0     trained with the embedding/output matrix at its q8_0 values, as llama.cpp will run it

Printed per variant: the KL from the float model on the held-out self-sampled sequences, perplexity on
--wiki-samples x 512 tokens of WikiText-2 *valid* (never trained on; the test split is gguf_quality's), and
seconds per step. Also the teacher's share of a step's time: what a teacher cache could save at most.

    .venv/bin/python benchmarks/qat_ablation.py --steps 40
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import slmkit
from slmkit.compress.calibration import calibration_ids, self_generated
from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN
from slmkit.distillation.qat import QATConfig, check_layers, q8_0_values, start_on_grid, train_on_grid

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
VARIANTS = {
    "default": {},
    "scales-first": {"scale_steps": "third"},
    "weights-only": {"learn_scales": False},
    "edges-q8_0": {"edges_at_q8_0": True},
}


def as_exported(model):
    """A copy of `model` with the embedding/output matrix at q8_0, as the GGUF holds it."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
            embedding.weight.copy_(q8_0_values(embedding.weight))
    return model


@torch.no_grad()
def held_out_kl(model, teacher, held_out: torch.Tensor) -> float:
    """KL(float || model) per next-token position on `held_out`, over the whole vocabulary."""
    kl = []
    for row in held_out.split(4):
        student = torch.log_softmax(model(row).logits[:, :-1].float(), dim=-1)
        float_model = torch.log_softmax(teacher(row).logits[:, :-1].float(), dim=-1)
        kl.append((float_model.exp() * (float_model - student)).sum(-1).flatten())
    return torch.cat(kl).mean().item()


@torch.no_grad()
def perplexity(model, wiki: torch.Tensor) -> float:
    return torch.stack([model(row, labels=row).loss for row in wiki.split(4)]).mean().exp().item()


def teacher_share(model, teacher, ids: torch.Tensor, repeats: int = 3) -> float:
    """The teacher's forward time over a QAT step's (student forward + backward + teacher forward)."""
    def timed(work) -> float:
        work()
        start = time.perf_counter()
        for _ in range(repeats):
            work()
        return (time.perf_counter() - start) / repeats

    with torch.no_grad():
        teacher_s = timed(lambda: teacher(ids))
    student_s = timed(lambda: model(ids, labels=ids).loss.backward())
    model.zero_grad(set_to_none=True)
    return teacher_s / (teacher_s + student_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--samples", type=int, default=QAT_SAMPLES)
    parser.add_argument("--seq-len", type=int, default=QAT_SEQ_LEN)
    parser.add_argument("--wiki-samples", type=int, default=16)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    lm = slmkit.load(args.model, device="cpu", dtype="float32")
    ids = self_generated(lm, args.samples, args.seq_len).clone()  # sampled under inference_mode: no autograd
    wiki = calibration_ids(lm, DATA / "wikitext-2-valid-tokenized.txt", samples=args.wiki_samples, seq_len=512)
    config = QATConfig(bits=4, group_size=32, symmetric=True, steps=args.steps, device="cpu")
    held = config.held_out_count(len(ids))
    check_layers(lm.model)
    teacher = copy.deepcopy(lm.model).eval().requires_grad_(False)
    started = time.perf_counter()
    start = start_on_grid(lm.model, config, ids[held:], torch.device("cpu"))
    print(f"GPTQ start: {time.perf_counter() - started:.0f} s", flush=True)
    exported = as_exported(lm.model)
    rows = [{"variant": "float model", "kl": 0.0, "perplexity": perplexity(teacher, wiki)},
            {"variant": "GPTQ start", "kl": held_out_kl(exported, teacher, ids[:held]),
             "perplexity": perplexity(exported, wiki)}]
    share = teacher_share(copy.deepcopy(lm.model).train(), teacher, ids[held:held + config.batch_size])
    print(f"teacher forward: {100 * share:.0f}% of a step's time", flush=True)

    for name in args.variants.split(","):
        settings = {key: (args.steps // 3 if value == "third" else value) for key, value in VARIANTS[name].items()}
        variant = QATConfig(bits=4, group_size=32, symmetric=True, steps=args.steps, device="cpu", **settings)
        model = copy.deepcopy(lm.model)
        started = time.perf_counter()
        metrics, _ = train_on_grid(model, teacher, lm.tokenizer, variant, ids, start, torch.device("cpu"))
        seconds = time.perf_counter() - started
        exported = as_exported(model)
        rows.append({"variant": name, "kl": held_out_kl(exported, teacher, ids[:held]),
                     "perplexity": perplexity(exported, wiki), "s_per_step": seconds / args.steps,
                     "training_kl_after": metrics["kl_after"]})
        print(f"{name}: KL {rows[-1]['kl']:.4f}, perplexity {rows[-1]['perplexity']:.3f}, "
              f"{seconds / args.steps:.1f} s/step", flush=True)

    print(f"\n{args.model}: {args.steps} QAT steps x {config.batch_size} x {args.seq_len} self-sampled tokens; "
          f"measured as exported (q4_0 layers, q8_0 embedding/output); {held} held-out sequences, "
          f"WikiText-2 valid {args.wiki_samples} x 512")
    print(f"{'variant':16}{'held-out KL':>13}{'wiki ppl':>10}{'s/step':>8}")
    for row in rows:
        step = f"{row['s_per_step']:8.1f}" if "s_per_step" in row else " " * 8
        print(f"{row['variant']:16}{row['kl']:13.4f}{row['perplexity']:10.3f}{step}")
    print(f"teacher forward: {100 * share:.0f}% of a step (the most a teacher cache saves)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"setting": vars(args), "rows": rows, "teacher_share": share},
                                                  indent=2))


if __name__ == "__main__":
    main()
