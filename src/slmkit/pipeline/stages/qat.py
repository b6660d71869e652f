"""The `qat` stage: the newest model trained onto q4_0's grid against its own float distributions (distill.qat),
saved as compressed-tensors that `export` with quant q4_0 writes bit for bit. Its sequences are the run's
--data (or the newest synth stage's answers), else text the model samples itself.

    - stage: qat
      steps: 200
    - stage: export
      quant: q4_0
"""

from __future__ import annotations

from typing import Literal

from slmkit.settings import QAT_SAMPLES, QAT_SEQ_LEN
from slmkit.pipeline.registry import CalibratedStage, StageContext, StageOutput, register_stage


class QATStage(CalibratedStage):
    """QATConfig's training settings; one left out takes QATConfig's default (kept there only)."""

    stage: Literal["qat"]
    calib_samples: int = QAT_SAMPLES
    calib_seq_len: int = QAT_SEQ_LEN
    target: Literal["gguf-q4_0"] = "gguf-q4_0"
    start: str | None = None
    steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None

    def config(self):
        from slmkit.distill.qat import qat_config

        return qat_config(bits=None, group_size=None, symmetric=None, target=self.target, observer=None,
                          start=self.start, steps=self.steps, lr=self.lr, batch_size=self.batch_size)


def run_qat(stage: QATStage, context: StageContext) -> StageOutput:
    import slmkit

    config = stage.config()
    lm = slmkit.load(context.source, device="cpu", dtype="float32")
    with context.progress("QAT on q4_0's grid, step") as update:
        result = slmkit.quantize(lm, config, stage.calibration(context), target=stage.target, progress=update)
    slmkit.save(lm, context.out, result=result, parent=context.source)
    return StageOutput({**result.summary, "loss_curve": result.config["loss_curve"]}, context.out.name)


register_stage(QATStage, run_qat)
