"""What the model-making stages share: open the newest checkpoint on the CPU, rewrite it, save it."""

from __future__ import annotations

from slmkit.pipeline.registry import StageContext, StageOutput


def compress_stage(context: StageContext, description: str, compress) -> StageOutput:
    """`compress(lm, progress) -> CompressResult` on the newest model, saved as a checkpoint in `context.out`.

    The model stays in float32 on the CPU; the method computes each block on the GPU when there is one.
    """
    import slmkit

    lm = slmkit.load(context.source, device="cpu", dtype="float32")
    with context.progress(description) as update:
        result = compress(lm, update)
    slmkit.save(lm, context.out, result=result, parent=context.source)
    return StageOutput(result.summary, context.out.name)
