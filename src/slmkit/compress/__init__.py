"""One-shot compression sharing one calibration runner."""

from slmkit.compress.calibration import calibration_ids
from slmkit.compress.prune import METHODS as PRUNE_METHODS
from slmkit.compress.prune import MagnitudeConfig, PruneConfig, SparseGPTConfig, WandaConfig, prune
from slmkit.compress.awq import AWQConfig
from slmkit.compress.quantize import METHODS as QUANT_METHODS
from slmkit.compress.quantize import GPTQConfig, QuantConfig, RTNConfig, quantize

__all__ = ["PRUNE_METHODS", "QUANT_METHODS", "AWQConfig", "GPTQConfig", "MagnitudeConfig", "PruneConfig", "QuantConfig",
           "RTNConfig", "SparseGPTConfig", "WandaConfig", "calibration_ids", "prune", "quantize"]
