"""A checkpoint directory is checked against itself before transformers builds it: each broken one is one line
naming the config.json field or the tensor (the cases a probe found hanging, half-loading or tracing back), and a
generated set of corrupted checkpoints never traces back, hangs or loads wrong through `slm info`."""

import json
import random
import shutil
import signal
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import run_slm, tiny_model
from safetensors.torch import load_file, save_file

import slmkit
from slmkit.errors import ModelLoadError, SlmError
from slmkit.models import load

FAMILIES = ("llama", "gpt2", "bert", "t5")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    made = {family: slmkit.save(tiny_model(family), root / family, tiny_tokenizer) for family in FAMILIES}
    sharded = root / "llama-sharded"  # model.safetensors.index.json and its shards
    tiny_model("llama").save_pretrained(sharded, max_shard_size="20KB")
    tiny_tokenizer.save_pretrained(sharded)
    return {**made, "llama-sharded": sharded}


@pytest.fixture
def llama(checkpoints, tmp_path) -> Path:
    return Path(shutil.copytree(checkpoints["llama"], tmp_path / "llama"))


def edit_config(directory: Path, **changes) -> Path:
    """config.json with `changes`; a field set to ... is removed."""
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not ...}))
    return directory / "config.json"


def edit_header(weights: Path, change) -> None:
    """`change(header)` on a safetensors file's JSON header; the tensor data stays as it was."""
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    change(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    weights.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])


def refused(directory: Path, message: str, **options) -> None:
    with pytest.raises(ModelLoadError) as error:
        load(str(directory), **options)
    assert str(error.value) == message


@pytest.mark.parametrize("changes, message", [
    ({"num_hidden_layers": 1000000}, "num_hidden_layers 1000000 but the weights hold 21 tensors in all"),
    ({"hidden_size": 2**31}, "hidden_size 2147483648 but the widest tensor, lm_head.weight, is [300, 32]"),
    ({"num_hidden_layers": 1}, "num_hidden_layers 1 but the weights hold 2 (model.layers.0 to model.layers.1)"),
    ({"num_hidden_layers": 3}, "num_hidden_layers 3 but the weights hold 2 (model.layers.0 to model.layers.1)"),
    ({"num_hidden_layers": 0}, "num_hidden_layers is 0; it should be a whole number of at least 1"),
    ({"num_hidden_layers": -1}, "num_hidden_layers is -1; it should be a whole number of at least 1"),
    ({"hidden_size": 64}, "hidden_size 64 but lm_head.weight is [300, 32]"),
    ({"vocab_size": 299}, "vocab_size 299 but lm_head.weight is [300, 32]"),
    ({"num_attention_heads": 0}, "num_attention_heads is 0; it should be a whole number of at least 1"),
    ({"num_attention_heads": "4"}, 'num_attention_heads is "4"; it should be a whole number of at least 1'),
    ({"dtype": ..., "torch_dtype": "float7"},
     'torch_dtype is "float7", which is not a torch dtype (float32, bfloat16, float16...)'),
    ({"model_type": "llama2"}, 'model_type "llama2" is not one transformers knows'),
    ({"architectures": "LlamaForCausalLM"}, 'architectures is "LlamaForCausalLM"; it should be a list of class names'),
    ({"max_position_embeddings": 2**31},
     "max_position_embeddings is 2147483648; slmkit takes at most 16777216 positions"),
    ({"rms_norm_eps": "small"},
     "transformers cannot read it (TypeError: Field 'rms_norm_eps' expected float, got str (value: 'small'))"),
])
def test_a_config_the_weights_do_not_fit_is_one_line_naming_the_field(llama, changes, message):
    config = edit_config(llama, **changes)
    refused(llama, f"{config}: {message}")


def test_slm_info_exits_2_with_the_line_before_building_a_million_layers(llama):
    config = edit_config(llama, num_hidden_layers=10**6)
    result = run_slm("info", str(llama), timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"error: {config}: num_hidden_layers 1000000 but the weights hold 21 tensors in all\n"


def test_a_size_no_single_field_explains_names_the_tensor_and_both_shapes(llama):
    edit_config(llama, num_key_value_heads=3)
    refused(llama, f"{llama / 'model.safetensors'}: model.layers.0.self_attn.k_proj.weight is [16, 32], where "
                   "config.json makes it [24, 32]")


def test_each_family_names_its_own_fields(checkpoints, tmp_path):
    gpt2 = Path(shutil.copytree(checkpoints["gpt2"], tmp_path / "gpt2"))
    config = edit_config(gpt2, n_embd=64)
    refused(gpt2, f"{config}: n_embd 64 but transformer.h.0.attn.c_attn.weight is [32, 96]")
    t5 = Path(shutil.copytree(checkpoints["t5"], tmp_path / "t5"))
    config = edit_config(t5, num_decoder_layers=1)
    refused(t5, f"{config}: num_decoder_layers 1 but the weights hold 2 (decoder.block.0 to decoder.block.1)")
    bert = Path(shutil.copytree(checkpoints["bert"], tmp_path / "bert"))
    config = edit_config(bert, max_position_embeddings=512)
    refused(bert, f"{config}: max_position_embeddings 512 but embeddings.position_embeddings.weight is [128, 32]")


def test_a_config_that_is_not_an_object_is_one_line(llama):
    (llama / "config.json").write_text("[1, 2]")
    refused(llama, f"{llama / 'config.json'}: not a JSON object (it holds a list)")


def test_weights_the_model_would_not_use_are_refused(llama):
    weights = llama / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.0.extra.weight"] = torch.zeros(4)
    save_file(tensors, weights, metadata={"format": "pt"})
    refused(llama, f"{weights}: model.layers.0.extra.weight is not part of the model config.json describes; "
                   "refusing to drop weights")


def test_a_header_shape_the_config_does_not_make_names_the_tensor(llama):
    weights = llama / "model.safetensors"
    edit_header(weights, lambda header: header["model.embed_tokens.weight"].update(shape=[32, 300]))
    refused(llama, f"{weights}: model.embed_tokens.weight is [32, 300], where config.json makes it [300, 32]")
    edit_header(weights, lambda header: header["model.embed_tokens.weight"].update(shape=[301, 32]))
    refused(llama, f"{weights}: corrupt safetensors header (Error while deserializing header: invalid shape, data "
                   "type, or offset for tensor)")


def test_broken_tokenizer_files_are_named(llama):
    tokenizer = llama / "tokenizer.json"
    text = tokenizer.read_text()
    tokenizer.write_text(text[:500])
    with pytest.raises(ModelLoadError, match=rf"^{tokenizer}: not valid JSON \(Unterminated string .+ at line \d+, "
                                             r"column \d+\)$"):
        load(str(llama))
    tokenizer.unlink()
    refused(llama, f"{tokenizer}: missing, and transformers cannot build the tokenizer from the other files "
                   "(ValueError: Couldn't instantiate the backend tokenizer from one of)")
    tokenizer.write_text(text)
    (llama / "tokenizer_config.json").write_text("{not json")
    refused(llama, f"{llama / 'tokenizer_config.json'}: not valid JSON (Expecting property name enclosed in double "
                   "quotes at line 1, column 2)")


def test_sharded_checkpoints_are_read_through_their_index(checkpoints, tmp_path):
    sharded = Path(shutil.copytree(checkpoints["llama-sharded"], tmp_path / "sharded"))
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    assert load(str(sharded)).config.num_hidden_layers == 2
    config = edit_config(sharded, num_hidden_layers=1)
    refused(sharded, f"{config}: num_hidden_layers 1 but the weights hold 2 (model.layers.0 to model.layers.1)")
    last = sorted(sharded.glob("model-*.safetensors"))[-1]
    last.unlink()
    refused(sharded, f"{sharded / 'model.safetensors.index.json'}: names {last.name}, which is not in the directory")


def test_a_new_classification_head_and_a_dropped_lm_head_still_load(llama):
    """Missing head weights (labels) and unused ones (a causal LM's lm_head under a classifier) are by design."""
    lm = load(str(llama), kind="classifier", labels=("neg", "pos"))
    assert lm.kind == "classifier" and lm.model.config.num_labels == 2


# The fuzz twin of test_gguf_validation's: corrupted checkpoint directories through `slm info`.
NUMBERS = [0, -1, 1, 2, 3, 7, 299, 301, 4096, 10**6, 2**31, 2**63, -2**31]
ODD_VALUES = [1.5, "x", "", True, False, None, [], [2], {}, {"a": 1}]


def fuzz_config_value(directory: Path, rng: random.Random) -> str:
    config = json.loads((directory / "config.json").read_text())
    numbers = [key for key, value in config.items() if type(value) is int]
    key = rng.choice(numbers) if numbers and rng.random() < 0.7 else rng.choice(sorted(config))
    value = config[key]
    if type(value) is int and rng.random() < 0.3:
        value = rng.choice([value + 1, value - 1, value * 2, value // 2, -value])
    else:
        value = rng.choice(NUMBERS + ODD_VALUES)
    edit_config(directory, **{key: value})
    return f"{key}={json.dumps(value)}"


def fuzz_config_file(directory: Path, rng: random.Random) -> str:
    config = directory / "config.json"
    text = config.read_text()
    choice = rng.choice(["list", "number", "string", "null", "empty object", "truncated", "not UTF-8", "empty",
                         "deleted", "nested"])
    content = {"list": "[1, 2]", "number": "42", "string": '"llama"', "null": "null", "empty object": "{}",
               "truncated": text[:rng.randrange(len(text))], "empty": "",
               "nested": json.dumps({**json.loads(text), "text_config": {"num_hidden_layers": 10**9}})}.get(choice)
    if choice == "not UTF-8":
        config.write_bytes(b"\xff\xfe" + text.encode()[2:])
    elif choice == "deleted":
        config.unlink()
    else:
        config.write_text(content)
    return choice


def fuzz_header(directory: Path, rng: random.Random) -> str:
    weights = rng.choice(sorted(directory.glob("*.safetensors")))
    names = sorted(load_file(weights))
    name, other = rng.choice(names), rng.choice(names)
    choice = rng.choice(["reverse dims", "flatten", "one more row", "rename", "swap shapes", "zero dim"])

    def change(header):
        entry = header[name]
        if choice == "reverse dims":
            entry["shape"] = entry["shape"][::-1]
        elif choice == "flatten":
            entry["shape"] = [int(torch.Size(entry["shape"]).numel())]
        elif choice == "one more row":
            entry["shape"] = [entry["shape"][0] + 1, *entry["shape"][1:]]
        elif choice == "rename":
            header[name + "x"] = header.pop(name)
        elif choice == "swap shapes":
            entry["shape"], header[other]["shape"] = header[other]["shape"], entry["shape"]
        else:
            entry["shape"] = [0, *entry["shape"][1:]]

    edit_header(weights, change)
    return f"{choice} {name}"


def fuzz_weights(directory: Path, rng: random.Random) -> str:
    weights = rng.choice(sorted(directory.glob("*.safetensors")))
    tensors = load_file(weights)
    name = rng.choice(sorted(tensors))
    choice = rng.choice(["drop", "extra", "duplicate under a new layer"])
    if choice == "drop":
        del tensors[name]
    elif choice == "extra":
        tensors["unused.weight"] = torch.zeros(3)
    else:
        tensors[name.replace(".0.", ".9.").replace(".1.", ".9.")] = tensors[name].clone()
    save_file(tensors, weights, metadata={"format": "pt"})
    return f"{choice} {name}"


def fuzz_tokenizer(directory: Path, rng: random.Random) -> str:
    file = directory / rng.choice(["tokenizer.json", "tokenizer_config.json"])
    data = file.read_bytes()
    choice = rng.choice(["truncated", "deleted", "garbage", "empty object", "a list", "not UTF-8"])
    garbage = bytes(rng.randrange(256) for _ in range(64))
    if choice == "deleted":
        file.unlink()
    else:
        file.write_bytes({"truncated": data[:rng.randrange(len(data))], "garbage": garbage, "empty object": b"{}",
                          "a list": b"[]", "not UTF-8": b"\xff" + data[1:]}[choice])
    return f"{choice} {file.name}"


FUZZERS = {"config value": fuzz_config_value, "config file": fuzz_config_file, "header shape": fuzz_header,
           "weights": fuzz_weights, "tokenizer": fuzz_tokenizer}
CASES = {"config value": 90, "config file": 15, "header shape": 30, "weights": 15, "tokenizer": 20}
CASE_SECONDS = 30  # a hang: transformers building a million layers took minutes


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so neither CliRunner nor slmkit turns it into an outcome."""


def loaded_right(directory: Path) -> bool:
    """Every stored tensor in the model under its name, with its shape and values, and every parameter stored."""
    model = load(str(directory)).model
    state = model.state_dict()
    stored = {name: tensor for file in directory.glob("*.safetensors") for name, tensor in load_file(file).items()}
    if any(name not in state or not torch.equal(state[name], tensor.to(state[name].dtype))
           for name, tensor in stored.items()):
        return False
    held = {state[name].data_ptr() for name in stored}
    return all(parameter.data_ptr() in held for parameter in model.parameters())


def test_fuzzed_checkpoints_end_in_one_line_or_a_model_loaded_right(checkpoints, tmp_path, capsys):
    from typer.testing import CliRunner

    from slmkit.cli.main import app

    def alarm(*_):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    rng = random.Random(28)
    outcomes, failures = Counter(), []
    try:
        for kind, count in CASES.items():
            for index in range(count):
                base = rng.choice(sorted(checkpoints))
                case = Path(shutil.copytree(checkpoints[base], tmp_path / f"{kind}-{index}".replace(" ", "-")))
                what = f"{kind} {base}: {FUZZERS[kind](case, rng)}"
                signal.alarm(CASE_SECONDS)
                try:
                    result = CliRunner().invoke(app, ["info", str(case), "--json"])
                    error = result.exception
                    if error is None and not loaded_right(case):
                        failures.append(f"{what}: loaded wrong")
                except Hang:
                    failures.append(f"{what}: still running after {CASE_SECONDS} s")
                    continue
                finally:
                    signal.alarm(0)
                if error is None:
                    outcomes[kind, "loaded"] += 1
                elif isinstance(error, SlmError) and "\n" not in str(error) and str(error):
                    outcomes[kind, "refused"] += 1
                else:
                    failures.append(f"{what}: {type(error).__name__}: {error}")
                shutil.rmtree(case)
    finally:
        signal.signal(signal.SIGALRM, previous)
    with capsys.disabled():
        print(f"\n{sum(CASES.values())} fuzzed checkpoints: "
              + ", ".join(f"{kind} {outcome} {n}" for (kind, outcome), n in sorted(outcomes.items())))
    assert failures == []
    assert sum(outcomes.values()) == sum(CASES.values())
    assert all(outcomes[kind, "refused"] > 0 for kind in CASES)


def test_compile_checks_before_loading_leave_a_bad_config_to_the_loader(tmp_path):
    from slmkit.runtime.weights import check_compile_before_loading

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": 5}))
    check_compile_before_loading(str(tmp_path))  # no TypeError: loading names the field in one line
    from slmkit.models.loading import peek_kind

    with pytest.raises(ModelLoadError, match=r"config.json: architectures is 5; it should be a list of class names"):
        peek_kind(str(tmp_path))  # what commands read before loading, e.g. the kind of model it is
