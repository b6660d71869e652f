"""One llm-compressor run for compress_vs_llmcompressor.py (run with the llm-compressor venv's python).

    python compress_vs_llmcompressor_worker.py MODEL_DIR METHOD CALIB_IDS.json OUT_DIR

Loads the float checkpoint with AutoModelForCausalLM, applies the modifier that
matches METHOD through `llmcompressor.oneshot` on the pre-tokenized calibration
windows in CALIB_IDS.json (a list of token-id lists, the very windows slmkit
calibrates on), saves the result to OUT_DIR (llm-compressor's default:
compressed-tensors) and prints one JSON line: the oneshot wall time, the
measured sparsity of the target matrices and the modifier used.

    python compress_vs_llmcompressor_worker.py --decompress IN_DIR OUT_DIR

re-saves a compressed checkpoint as plain dense safetensors (for an evaluator
that cannot read the compressed form).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The Linear layers inside the decoder blocks; lm_head (tied to the embeddings) stays float.
BLOCK_LINEARS = r"re:.*layers\.\d+\..*_proj$"
# Wanda/SparseGPT name a targeted Linear "lm_head." (trailing dot), so a plain "lm_head" in
# `ignore` does not match and the tied lm_head/embedding gets pruned; the regex does.
IGNORE = ["re:.*lm_head"]


def modifier_for(method: str):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    def w4_g64_sym():
        return {"group_0": QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=64),
            input_activations=None, output_activations=None)}

    if method == "magnitude-50":
        from llmcompressor.modifiers.pruning import MagnitudePruningModifier
        # A one-shot schedule: 50% from the first step on, masks applied in the forward hooks.
        return MagnitudePruningModifier(targets=BLOCK_LINEARS, init_sparsity=0.5, final_sparsity=0.5,
                                        start=0, end=1, update=1, mask_structure="unstructured")
    if method == "wanda-50":
        from llmcompressor.modifiers.pruning import WandaPruningModifier
        return WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=IGNORE)
    if method == "sparsegpt-50":
        from llmcompressor.modifiers.pruning import SparseGPTModifier
        return SparseGPTModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=IGNORE)
    if method == "sparsegpt-2:4":
        from llmcompressor.modifiers.pruning import SparseGPTModifier
        return SparseGPTModifier(sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=IGNORE)
    if method == "rtn-w4g64":
        from llmcompressor.modifiers.quantization import QuantizationModifier
        return QuantizationModifier(config_groups=w4_g64_sym(), ignore=IGNORE)
    if method == "gptq-w4g64":
        from llmcompressor.modifiers.quantization import GPTQModifier
        # llm-compressor's defaults otherwise: block_size 128, dampening 0.01, actorder "static".
        return GPTQModifier(config_groups=w4_g64_sym(), ignore=IGNORE)
    raise SystemExit(f"unknown method {method!r}")


def block_sparsity(model) -> float:
    import re

    import torch

    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and re.search(BLOCK_LINEARS[3:], name):
            weight = module.weight.detach()
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else 0.0


def compress(model_dir: str, method: str, calib_path: str, out_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    with open(calib_path) as f:
        windows = json.load(f)
    samples, seq_len = len(windows), len(windows[0])
    dataset = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * seq_len for _ in windows]})

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    modifier = modifier_for(method)
    # The float checkpoint (dequantized from a GGUF) already has some exact zeros; count only new ones.
    lm_head_zeros_before = float((model.lm_head.weight == 0).float().mean())

    start = time.perf_counter()
    model = oneshot(model=model, processor=tokenizer, recipe=[modifier], dataset=dataset,
                    num_calibration_samples=samples, max_seq_length=seq_len,
                    shuffle_calibration_samples=False)
    oneshot_s = time.perf_counter() - start

    sparsity = block_sparsity(model)
    lm_head_zeros = float((model.lm_head.weight == 0).float().mean()) - lm_head_zeros_before
    start = time.perf_counter()
    model.save_pretrained(out_dir)  # compressed-tensors, as llm-compressor saves by default
    tokenizer.save_pretrained(out_dir)
    save_s = time.perf_counter() - start
    return {"method": method, "oneshot_s": oneshot_s, "save_s": save_s, "block_sparsity": sparsity,
            "lm_head_new_zero_fraction": lm_head_zeros,
            "modifier": repr(modifier)}


def decompress(in_dir: str, out_dir: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(in_dir, dtype=torch.float32)
    # Drop the compression config so the copy is a plain dense checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(in_dir).save_pretrained(out_dir)
    return {"decompressed": out_dir, "block_sparsity": block_sparsity(model)}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--decompress"]:
        result = decompress(argv[1], argv[2])
    else:
        result = compress(*argv)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
