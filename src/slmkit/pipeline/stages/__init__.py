"""The built-in recipe stages: those of every verb in slmkit.verbs.VERBS that is a recipe stage, in the verbs'
order, each made from the verb's record (pipeline.registry.verb_stage). The module named after a verb holds what
a recipe alone adds to it, in `RECIPE_STAGES`: the data a training stage reads, the models a measuring stage
measures, where an export's file goes, and the stages a verb gives beside its own (prune's structured, quantize's
qat).
"""

from importlib import import_module

from slmkit.pipeline.registry import register_stage
from slmkit.verbs import VERBS

for verb in VERBS.values():
    if verb.recipe:
        for kind in import_module(f"{__name__}.{verb.name}").RECIPE_STAGES:
            register_stage(kind.schema, kind.run)
