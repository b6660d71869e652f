"""The `slm` command line."""

import os

# Library progress bars would bury our one-line output and rich progress; tqdm reads its switch
# when it is imported, which happens (through torch) before any command runs.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
