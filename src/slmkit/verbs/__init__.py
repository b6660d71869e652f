"""One module per verb (eval, bench, prune, quantize, export, finetune, synth, student, distill): its settings (the
schema `slm <verb>`, the recipe stage and the library share, slmkit.schema), its `run`, which checks what can fail
before the slow load, then does the work, and its record in VERBS (slmkit.verbs.registry), which both front ends
walk. `slm <verb>` parses, runs the verb and prints its StageResult; a recipe stage runs the same verb on the run's
newest model (a measuring one on each model).

Only what settings need is imported here (the CLI reads them to build its options without torch); a verb's `run`
imports the library it drives.
"""

from slmkit.results import StageResult  # noqa: F401  (what every verb returns)
from slmkit.verbs.registry import VERBS, ProgressFactory, Verb  # noqa: F401

# Importing a verb's module registers it, in the order `slm --help` lists the commands.
from slmkit.verbs import evaluation, bench, prune, quantize, export  # noqa: F401, I001
from slmkit.verbs import finetune, synth, student, distill  # noqa: F401, I001
