"""One-shot compression sharing one calibration runner."""

from slmkit.compress.calibration import calibration_ids
from slmkit.compress.prune import METHODS as PRUNE_METHODS
from slmkit.compress.prune import MagnitudeConfig, PruneConfig, SparseGPTConfig, WandaConfig, prune

__all__ = ["PRUNE_METHODS", "MagnitudeConfig", "PruneConfig", "SparseGPTConfig", "WandaConfig", "calibration_ids",
           "prune"]
