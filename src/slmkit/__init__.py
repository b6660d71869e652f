"""slmkit: make language models small, make them yours, prove it, run them locally.

The Python API mirrors the `slm` CLI verb for verb.
"""

__version__ = "0.1.0"

from slmkit.errors import SlmError  # noqa: E402
from slmkit.compress import prune, quantize  # noqa: E402
from slmkit.evaluate import evaluate  # noqa: E402
from slmkit.models import LoadedModel, load, save  # noqa: E402

__all__ = ["LoadedModel", "SlmError", "evaluate", "load", "prune", "quantize", "save", "__version__"]
