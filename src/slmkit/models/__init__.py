"""Where models come from: aliases, local directories, .gguf files, hub ids; checkpoints."""

from slmkit.models.catalog import CATALOG, DEFAULT_MODEL
from slmkit.models.checkpoint import read_manifest, save
from slmkit.models.loading import LoadedModel, load, resolve

__all__ = ["CATALOG", "DEFAULT_MODEL", "LoadedModel", "load", "read_manifest", "resolve", "save"]
