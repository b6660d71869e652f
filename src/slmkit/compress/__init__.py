"""One-shot compression sharing one calibration runner."""

from slmkit.compress.calibration import calibration_ids
from slmkit.compress.prune import METHODS as PRUNE_METHODS
from slmkit.compress.prune import PRUNERS, MagnitudeConfig, PruneConfig, SparseGPTConfig, WandaConfig, prune
from slmkit.compress.awq import AWQConfig
from slmkit.compress.quantize import METHODS as QUANT_METHODS
from slmkit.compress.quantize import QUANTIZERS, GPTQConfig, QuantConfig, RTNConfig, quantize

__all__ = ["PRUNE_METHODS", "QUANT_METHODS", "AWQConfig", "GPTQConfig", "MagnitudeConfig", "PruneConfig", "QuantConfig",
           "RTNConfig", "SparseGPTConfig", "WandaConfig", "calibration_ids", "needs_calibration", "prune", "quantize"]


def needs_calibration(config) -> bool:
    """Whether the method a config names reads calibration data (magnitude and RTN do not;
    structured pruning scores blocks and channels on it)."""
    method = PRUNERS.get(type(config)) or QUANTIZERS.get(type(config))
    return method.needs_calibration if method is not None else True
