"""A checkpoint directory checked against itself before transformers builds it: one line naming the field or the
tensor, where transformers would hang, load half a model or trace back.

transformers builds whatever config.json describes, then fills it from the weights: a million layers hang while
they are built, fewer layers than the weights drop the rest silently, a size that differs ends in an error that
points at a report it logs. Here config.json's fields are checked first (types; layer counts no larger than the
weights' tensor count and sizes no larger than their widest dimension, so nothing big gets built), then
transformers' own loading runs on the meta device, where nothing is allocated, with the safetensors headers'
shapes standing in for the tensors: what it would reshape or drop is refused, naming the config.json field that,
set to what the weights hold, makes them fit.
"""

from __future__ import annotations

import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

from slmkit.errors import ModelLoadError, first_line, json_problem
from slmkit.models.validate import check_safetensors

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
# transformers' names for the sizes every family has (each family's own, n_embd, d_model..., via attribute_map),
# and GPT-J's rotary width: each no larger than the weights' largest dimension.
SIZE_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim",
               "vocab_size", "rotary_dim")
# Rotary positions have no tensor to bound them, yet some families compute a table of them while building:
# a generous cap, past any released model's context.
MAX_POSITIONS = 1 << 24
DTYPE_FIELDS = ("dtype", "torch_dtype")
# Fields counting modules, beside attribute_map's num_hidden_layers: no more than the weights hold tensors.
LAYER_COUNT = re.compile(r"num_\w*(layers|networks)|n_layers?|(en|de)coder_layers")


def weight_headers(directory: Path) -> dict[str, tuple[Path, list[int]]]:
    """Tensor name -> (file, shape) over the safetensors files transformers reads: model.safetensors, else the
    shards model.safetensors.index.json names. {} when there are neither (transformers then says so)."""
    if (directory / WEIGHTS).is_file():
        files = [directory / WEIGHTS]
    elif (directory / INDEX).is_file():
        files = _index_shards(directory / INDEX)
    else:
        return {}
    return {name: (file, entry["shape"]) for file in files for name, entry in check_safetensors(file).items()
            if name != "__metadata__"}


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_bytes()).get("weight_map")
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{index}: not valid JSON ({json_problem(exc)})") from None
    except (UnicodeDecodeError, AttributeError):  # not text, or a list or a number where the object should be
        weight_map = None
    if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
        raise ModelLoadError(f"{index}: no weight_map object naming each tensor's file")
    shards = [index.parent / shard for shard in sorted(set(weight_map.values()))]
    absent = next((shard for shard in shards if not shard.is_file() or shard.parent != index.parent), None)
    if absent is not None:
        raise ModelLoadError(f"{index}: names {absent.name}, which is not in the directory")
    return shards


def check_config_fields(config_path: Path, config: dict, headers: dict, where: str = "") -> None:
    """What transformers would trip over, or hang on, while building the config: sizes that are not whole numbers
    of at least 1, a layer count larger than the weights' tensor count (each layer holds at least one), an unknown
    dtype. Nested configs (text_config...) get the same checks."""
    import torch
    from transformers import CONFIG_MAPPING

    architectures = config.get("architectures")
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(name, str) for name in architectures)):
        raise ModelLoadError(f"{config_path}: {where}architectures is {json.dumps(architectures)}; it should be a "
                             "list of class names")
    if not isinstance(config.get("quantization_config") or {}, dict):
        raise ModelLoadError(f"{config_path}: {where}quantization_config should be an object")
    model_type = config.get("model_type")
    config_class = CONFIG_MAPPING[model_type] if isinstance(model_type, str) and model_type in CONFIG_MAPPING else None
    if not where and config_class is None and not config.get("auto_map"):  # remote code brings its own types
        raise ModelLoadError(f"{config_path}: model_type {json.dumps(model_type)} is not one transformers knows")
    canonical = {own: name for name, own in getattr(config_class, "attribute_map", {}).items()}
    widest = max(((name, shape) for name, (_, shape) in headers.items()), key=lambda item: max(item[1], default=0),
                 default=None)
    for key, value in config.items():
        if isinstance(value, dict):
            check_config_fields(config_path, value, headers, f"{where}{key}.")
        name = canonical.get(key, key)
        counts_layers = name == "num_hidden_layers" or LAYER_COUNT.fullmatch(key) is not None
        if (name in SIZE_FIELDS or name == "max_position_embeddings" or counts_layers) and value is not None:
            low = 0 if counts_layers and name != "num_hidden_layers" else 1  # e.g. no layers shared, no decoder
            if type(value) is not int or value < low:
                raise ModelLoadError(f"{config_path}: {where}{key} is {json.dumps(value)}; it should be a whole "
                                     f"number of at least {low}")
            if counts_layers and headers and value > len(headers):
                raise ModelLoadError(f"{config_path}: {where}{key} {value} but the weights hold {len(headers)} "
                                     "tensors in all")
            if name in SIZE_FIELDS and headers and value > max(widest[1], default=0):
                raise ModelLoadError(f"{config_path}: {where}{key} {value} but the widest tensor, {widest[0]}, is "
                                     f"{widest[1]}")
            if name == "max_position_embeddings" and value > MAX_POSITIONS:
                raise ModelLoadError(f"{config_path}: {where}{key} is {value}; slmkit takes at most {MAX_POSITIONS} "
                                     "positions")
        if key in DTYPE_FIELDS and value not in (None, "auto") and not isinstance(getattr(torch, str(value), None),
                                                                              torch.dtype):
            raise ModelLoadError(f"{config_path}: {where}{key} is {json.dumps(value)}, which is not a torch dtype "
                                 "(float32, bfloat16, float16...)")


def check_against_weights(directory: Path, config: dict, headers: dict, auto_class, quantization=None) -> list[str]:
    """transformers' loading of the headers' shapes into the model config.json describes, on the meta device:
    a tensor it would reshape or drop is refused in one line. Returns the names it would leave missing, for the
    caller's policy (an optional pooler, a new classification head)."""
    dry_run = DryRun(directory / "config.json", headers, auto_class, quantization)
    model, info = dry_run(config)
    missing = set(info["missing_keys"])
    mismatched = sorted((name, list(file_shape), list(model_shape))
                        for name, file_shape, model_shape in info["mismatched_keys"])
    tried = set()
    for name, file_shape, model_shape in mismatched:
        if len(file_shape) != len(model_shape):
            continue
        for sizes in zip(model_shape, file_shape):  # a width derived from a field (3 x n_embd) names no field
            if sizes[0] != sizes[1] and sizes not in tried:
                tried.add(sizes)
                field = dry_run.field_that_fits(config, *sizes, missing)
                if field is not None:
                    raise ModelLoadError(f"{dry_run.config_path}: {field} {config[field]} but {name} is {file_shape}")
    if mismatched:
        name, file_shape, model_shape = mismatched[0]
        raise ModelLoadError(f"{_file_of(name, headers, directory)}: {name} is {file_shape}, where config.json "
                             f"makes it {model_shape}")
    for problem in ("unexpected_keys", "missing_keys"):
        numbered = [key for key in sorted(info[problem]) if _numbered(key)]
        if numbered:  # a layer one side has and the other not: the field that counts that list
            container = _numbered(numbered[0])[0]
            in_file, in_model = len(_indices(container, headers)), len(_indices(container, model.state_dict()))
            field = dry_run.field_that_fits(config, in_model, in_file, missing - set(numbered))
            if field is not None:
                raise ModelLoadError(f"{dry_run.config_path}: {field} {config[field]} but the weights hold {in_file} "
                                     f"({container}.0 to {container}.{in_file - 1})")
    if info["unexpected_keys"]:
        unused = sorted(info["unexpected_keys"])
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise ModelLoadError(f"{_file_of(unused[0], headers, directory)}: {unused[0]}{more} is not part of the model "
                             "config.json describes; refusing to drop weights")
    return sorted(missing)


def _file_of(name: str, headers: dict, directory: Path) -> Path:
    """The file holding a tensor; the directory when transformers renamed it (a prefix, a legacy name)."""
    return headers[name][0] if name in headers else directory


def _numbered(key: str) -> tuple[str, str] | None:
    """("model.layers", "3") for `model.layers.3.mlp.up_proj.weight`: the module list a tensor's first index is in."""
    match = re.match(r"(.+?)\.(\d+)\.", key)
    return match.groups() if match else None


def _indices(container: str, names) -> set[str]:
    return {name[len(container) + 1:].split(".")[0] for name in names if name.startswith(f"{container}.")}


class DryRun:
    """transformers' from_pretrained on the meta device: the checkpoint's own class (`architectures`, else the
    kind's auto class), meta tensors of the headers' shapes for the weights. Calls return (model, loading info)."""

    def __init__(self, config_path: Path, headers: dict, auto_class, quantization):
        import torch

        self.config_path, self.auto_class, self.quantization = config_path, auto_class, quantization
        self.state = {name: torch.empty(shape, device="meta") for name, (_, shape) in headers.items()}

    def __call__(self, config: dict):
        import transformers

        try:
            built = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(config)
        except Exception as exc:  # transformers raises many types for values it cannot take
            raise ModelLoadError(f"{self.config_path}: transformers cannot read it ({_reason(exc)})") from None
        own = [getattr(transformers, name, None) for name in built.architectures or []]
        model_class = next((cls for cls in own if getattr(cls, "config_class", None) is type(built)), None)
        if model_class is None:  # the class the auto class picks (its from_pretrained needs a path to read)
            model_class = self.auto_class._model_mapping.get(type(built), None)
            if model_class is None:
                raise ModelLoadError(f"{self.config_path}: transformers has no {self.auto_class.__name__} class for "
                                     f"model_type {built.model_type!r}")
        extra = {"quantization_config": self.quantization} if self.quantization is not None else {}
        try:
            with _quiet_transformers():
                model, info = model_class.from_pretrained(None, config=built, state_dict=dict(self.state),
                                                          device_map="meta", use_kernels=False,
                                                          ignore_mismatched_sizes=True, output_loading_info=True,
                                                          **extra)
        except Exception as exc:
            raise ModelLoadError(f"{self.config_path}: transformers cannot build {model_class.__name__} from it "
                                 f"({_reason(exc)})") from None
        # transformers drops some names unreported (GPT-2's pattern for its old mask buffers, "attn.bias", also
        # matches c_attn.bias): a tensor in a layer the model does not have is unused all the same.
        numbered, names = {name: found for name in self.state if (found := _numbered(name))}, model.state_dict()
        in_model = {container: _indices(container, names) for container in {found[0] for found in numbered.values()}}
        info["unexpected_keys"] = set(info["unexpected_keys"]) | {
            name for name, (container, index) in numbered.items()
            if in_model[container] and index not in in_model[container]}
        return model, info

    def field_that_fits(self, config: dict, model_value, file_value, missing) -> str | None:
        """The top-level field holding `model_value` which, set to `file_value`, makes every tensor fit (leaving no
        more missing than `missing`): the one field to blame."""
        for field, value in config.items():
            if type(value) is int and value == model_value:
                try:
                    _, info = self({**config, field: file_value})
                except ModelLoadError:
                    continue
                if not info["mismatched_keys"] and not info["unexpected_keys"] and set(info["missing_keys"]) <= missing:
                    return field
        return None


def _reason(exc: Exception) -> str:
    """transformers' config validation puts the reason on the line after "Validation error for field 'x':"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[-1]
    return f"{type(exc).__name__}: {first_line(exc)}"


@contextmanager
def _quiet_transformers():
    """The dry run's load report, progress bar and warnings would read as the real load's."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
