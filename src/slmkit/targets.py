"""GGUF block types whose grid slmkit's symmetric quantizers produce exactly: 32 weights per block, one
float16 scale, codes -2^(b-1)..2^(b-1)-1. Here, without torch, so `slm quantize --help` can name them."""

GGUF_TARGETS = {"gguf-q4_0": 4, "gguf-q8_0": 8}  # --target -> bits
# A type per weight matrix, chosen under a budget (compress.gguf_quantize): any of the block types llama.cpp reads.
PLANNED_TARGET = "gguf"
