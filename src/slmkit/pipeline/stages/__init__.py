"""The built-in recipe stages; importing a stage's module registers it (pipeline.registry).

In the order errors list them: model-making stages as a recipe usually runs them, then measurements.
"""

from slmkit.pipeline.stages import synth  # noqa: F401, I001
from slmkit.pipeline.stages import finetune  # noqa: F401, I001
from slmkit.pipeline.stages import distill  # noqa: F401, I001
from slmkit.pipeline.stages import prune  # noqa: F401
from slmkit.pipeline.stages import quantize  # noqa: F401
from slmkit.pipeline.stages import qat  # noqa: F401
from slmkit.pipeline.stages import export  # noqa: F401
from slmkit.pipeline.stages import eval  # noqa: F401
from slmkit.pipeline.stages import bench  # noqa: F401
