"""`prune`: unstructured or N:M sparsity (magnitude, Wanda, SparseGPT), or structured pruning (whole blocks,
FFN channels and heads: a smaller dense model). One settings class for `slm prune`, the `prune` and
`structured` recipe stages and `slmkit.prune`'s method config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slmkit
from slmkit.errors import SlmError
from slmkit.results import StageResult
from slmkit.schema import setting
from slmkit.settings import CalibrationSettings, ComputeSettings, OpenSettings
from slmkit.verbs.registry import ProgressFactory, Verb, register

STRUCTURED_ONLY = ("depth", "width", "ffn", "heads", "target_params")


@dataclass(kw_only=True)
class PruneSettings(CalibrationSettings, ComputeSettings, OpenSettings):
    """How to prune: `method` with `sparsity` or `pattern`, or `structured` with depth, width or a size."""

    method: str = setting("magnitude | wanda | sparsegpt", "wanda")
    sparsity: float | None = setting("Fraction of weights removed per matrix, e.g. 0.5.", None)
    pattern: str | None = setting("N:M sparsity, e.g. 2:4 (keep N of every M).", None)
    # The recipe has a stage of its own for structured pruning.
    structured: bool = setting("Remove whole blocks, channels and heads: a smaller dense model.", False,
                               recipe=False)
    depth: int = setting("--structured: blocks to remove.", 0)
    width: str | None = setting("--structured: what to keep per block, e.g. ffn=1024,heads=6.", None, recipe=False)
    # A recipe names the two widths as keys of their own; --width sets them on the command line.
    ffn: int | None = setting("FFN channels to keep in every block.", None, cli=False)
    heads: int | None = setting("Attention (query) heads to keep in every block.", None, cli=False)
    target_params: str | None = setting("--structured: total size wanted, e.g. 90M.", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width:
            widths = parse_width(self.width)
            self.ffn, self.heads = widths.get("ffn"), widths.get("heads")
        if not self.structured and (self.depth or self.ffn or self.heads or self.target_params):
            raise SlmError("--depth, --width and --target-params need --structured")

    def method_config(self):
        """The config `slmkit.prune` takes, checked."""
        # The method configs live with the methods, which import torch: imported here, out of CLI start-up.
        if self.structured:
            from slmkit.compress.structured import StructuredConfig

            return StructuredConfig(depth=self.depth, ffn=self.ffn, heads=self.heads,
                                    target_params=parse_count(self.target_params))
        from slmkit.compress.prune import prune_config

        return prune_config(self.method, sparsity=self.sparsity, pattern=self.pattern)

    def description(self) -> str:
        return "scoring blocks, channels and heads" if self.structured else f"{self.method} pruning, block"


def run(settings: PruneSettings, model: str, out: Path, *, progress: ProgressFactory, force: bool = False,
        data: str | Path | None = None) -> StageResult:
    """Prune `model` and save the result in `out`. `data`: the calibration text when `settings.calib` is unset."""
    from slmkit.verbs.compress import compress  # torch: kept out of CLI start-up

    config = settings.method_config()
    return compress(settings, model, out, config, progress=progress, force=force, data=data,
                    method=lambda lm, calibration, device, update: slmkit.prune(
                        lm, config, calibration, device=device, progress=update),
                    description=settings.description())


VERB = register(Verb("prune", PruneSettings, run))


def parse_count(text: str | int | None) -> int | None:
    """A parameter count as people write it: 90M, 1.2B, 500K or a plain number."""
    if text is None:
        return None
    text = str(text)
    multipliers = {"K": 10**3, "M": 10**6, "B": 10**9}
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].upper() in multipliers else (text, "")
    try:
        return int(float(number) * multipliers.get(unit, 1))
    except ValueError:
        raise SlmError(f"--target-params {text!r}: expected a number like 90M or 1.2B") from None


def parse_width(width: str | None) -> dict[str, int]:
    """`ffn=1024,heads=6` as {"ffn": 1024, "heads": 6}."""
    if not width:
        return {}
    parsed = {}
    for part in width.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("ffn", "heads") or not value.strip().isdigit():
            raise SlmError(f"--width {width!r}: expected ffn=N and/or heads=N, e.g. ffn=1024,heads=6")
        parsed[key.strip()] = int(value)
    return parsed
