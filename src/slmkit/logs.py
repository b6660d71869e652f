"""Quiet third-party output: our commands print one line, not a library's bars and warnings."""

from __future__ import annotations


def quiet_torchao() -> None:
    """torchao (installed with the executorch extra; transformers imports it where present) warns at import of each
    CUDA kernel library it cannot load on a machine without CUDA, and torch that its enums need no pytree
    registration. Set before any import (the CLI's start): transformers may import it before a verb quietens."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """Library progress bars and warnings would bury our one-line output."""
    import logging
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    # Loading a compressed-tensors checkpoint passes its own quantization config back in; harmless.
    warnings.filterwarnings("ignore", message="You passed `quantization_config`")
    # peft asks transformers 5 for a renamed property while it wraps a model for LoRA.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # The ONNX exporter warns about every optional operator library it does not find (torchvision).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    quiet_torchao()
