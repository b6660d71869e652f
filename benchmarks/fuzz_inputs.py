"""Fuzz the way into slmkit: mutated model and data files, never a crash.

A tiny llama is saved as a checkpoint and exported as an f32 GGUF. Each case mutates a copy (seeded):
- GGUF (3 cases in 5): a flipped header byte, an integer field set to an extreme, a string's bytes, a
  tensor's dims, type or offset, or a truncation; opened with `runtime.open_model` (llama.cpp) and
  `slmkit.load` (torch);
- safetensors (1 in 5): a byte of the header, its length prefix, or a truncation; opened with `slmkit.load`;
- data (1 in 5): a byte of a JSONL (ARC), CSV or TSV file set to a quote, newline, delimiter or junk, or a
  truncation; read the way `slm eval` reads it.
Each must end in a clean one-line slmkit error, or a load that then scores a few tokens (data: rows read);
a traceback (any other exception), a death by signal or a hang (over --timeout seconds) is a failure.

Cases run in a worker process that prints each outcome; when a case kills the worker, the parent records
it as a signal death and starts a new worker at the next case.

    .venv/bin/python benchmarks/fuzz_inputs.py --cases 500           # the issue's figure, ~10 min
    .venv/bin/python benchmarks/fuzz_inputs.py --cases 40 --json     # what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

INTERESTING = [0, 1, 2, 3, 255, 512, 513, 4096, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 10**9]
KINDS = ("byte", "integer", "string", "tensor", "truncate")
TARGETS = ("gguf", "gguf", "safetensors", "gguf", "data")
DATA_FILES = {
    "arc.jsonl": '{"question": "Which is a planet?", "choices": {"text": ["Mars", "Moon"], "label": ["A", "B"]}, '
                 '"answerKey": "A"}\n{"question": "Hot?", "choices": {"text": ["fire", "ice"], "label": ["A", "B"]}, '
                 '"answerKey": "A"}\n',
    "reviews.csv": 'text,label\n"a good\nmovie",pos\n"slow, then great",pos\nbad,neg\n',
    "dev.tsv": "text\tlabel\ngreat movie\tpos\nboring\tneg\n",
}


def build_model(directory: Path) -> Path:
    """The tiny exported GGUF every case starts from."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import slmkit

    text = (Path(__file__).resolve().parents[1] / "src/slmkit/samples/small-models.txt").read_text()
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         architectures=["LlamaForCausalLM"])
    checkpoint = slmkit.save(LlamaForCausalLM(config).eval(), directory / "tiny", tokenizer)
    gguf = directory / "tiny.f32.gguf"
    slmkit.export(slmkit.load(str(checkpoint)), gguf, slmkit.GGUFConfig(quant="f32"))
    for name, content in DATA_FILES.items():
        (directory / name).write_text(content)
    return gguf


def mutate_bytes(target: Path, rng: random.Random, region: int | None = None) -> str:
    """A byte of `target` (within its first `region` bytes) set to something a parser trips on, or a cut."""
    data = bytearray(target.read_bytes())
    if rng.random() < 0.25:
        keep = rng.randrange(len(data))
        target.write_bytes(bytes(data[:keep]))
        return f"truncated to {keep} of {len(data)} bytes"
    offset = rng.randrange(min(region or len(data), len(data)))
    old = data[offset]
    data[offset] = rng.choice([ord('"'), ord("\n"), ord(","), ord("\t"), ord("{"), ord("]"), 0, 0xFF, 0x80,
                               old ^ (1 << rng.randrange(8)), rng.randrange(256)])
    target.write_bytes(bytes(data))
    return f"byte {offset}: {old} -> {data[offset]}"


def mutate_checkpoint(source: Path, target: Path, rng: random.Random) -> str:
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    if rng.random() < 0.2:  # the header's length prefix
        data = bytearray(weights.read_bytes())
        data[:8] = rng.choice([0, 1, 7, 2**60, 2**64 - 1, len(data), rng.randrange(2**16)]).to_bytes(8, "little")
        weights.write_bytes(bytes(data))
        return "safetensors header length"
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    return "safetensors " + mutate_bytes(weights, rng, region=header)


def open_data(path: Path) -> dict:
    from slmkit import data
    from slmkit.errors import SlmError

    try:
        task = data.infer_task(path)
        loader = {"choice": data.load_choice, "classification": data.load_labeled}.get(task, data.load_text)
        loader(path)
        return {"data": "loaded"}
    except SlmError as exc:
        return {"data": "refused" if "\n" not in str(exc) else f"multi-line error: {exc!r}"}
    except Exception as exc:
        return {"data": f"traceback: {type(exc).__name__}: {str(exc)[:200]}"}


def open_checkpoint(path: Path) -> dict:
    import torch

    import slmkit
    from slmkit.errors import SlmError

    try:
        lm = slmkit.load(str(path))
        ids = torch.tensor([[1, 2, 3, 4]])
        lm.logits(ids, torch.ones_like(ids))
        return {"torch": "loaded"}
    except SlmError as exc:
        return {"torch": "refused" if "\n" not in str(exc) else f"multi-line error: {exc!r}"}
    except Exception as exc:
        return {"torch": f"traceback: {type(exc).__name__}: {str(exc)[:200]}"}


def mutate(source: Path, target: Path, case: int, seed: int) -> str:
    """Write case `case`'s mutation of `source` to `target`; returns what was changed."""
    import numpy as np
    from gguf import GGUFReader

    rng = random.Random(seed * 1_000_003 + case)
    kind = KINDS[case % len(KINDS)]
    shutil.copy(source, target)
    if kind == "truncate":
        size = target.stat().st_size
        keep = rng.randrange(size)
        with target.open("r+b") as handle:
            handle.truncate(keep)
        return f"truncated to {keep} of {size} bytes"
    reader = GGUFReader(target, "r+")
    if kind == "byte":
        offset = rng.randrange(reader.data_offset)
        old = int(reader.data[offset])
        reader.data[offset] = rng.choice([old ^ (1 << rng.randrange(8)), 0, 0xFF, rng.randrange(256)])
        described = f"header byte {offset}: {old} -> {int(reader.data[offset])}"
    elif kind == "integer":
        integers = [(key, field) for key, field in reader.fields.items()
                    if field.types and field.types[-1].name.startswith(("UINT", "INT")) and field.data]
        key, field = rng.choice(integers)
        part = field.parts[rng.choice(field.data)]
        limit = np.iinfo(part.dtype)
        value = rng.choice(INTERESTING + [rng.randrange(limit.min, limit.max)])
        part[0] = min(max(value, limit.min), limit.max)
        described = f"{key} = {int(part[0])}"
    elif kind == "string":
        strings = [(key, field) for key, field in reader.fields.items()
                   if field.types and field.types[-1].name == "STRING" and field.data]
        key, field = rng.choice(strings)
        part = field.parts[rng.choice(field.data)]
        if len(part):
            position = rng.randrange(len(part))
            part[position] = rng.choice([0, 0xFF, 0x80, ord("{"), ord(" "), rng.randrange(256)])
        described = f"a byte of a {key} string"
    else:
        tensor = rng.choice(reader.tensors)
        which = rng.choice(["dims", "type", "offset"])
        part = tensor.field.parts[{"dims": 3, "type": 4, "offset": 5}[which]]
        limit = np.iinfo(part.dtype)
        part[rng.randrange(len(part))] = min(rng.choice(INTERESTING + [rng.randrange(0, 64)]), limit.max)
        described = f"tensor {tensor.name} {which}"
    reader.data.flush()
    del reader
    return described


def open_both(path: Path) -> dict:
    """How each runtime took the file: refused (one line), loaded (and scored), or raised something else."""
    import torch

    import slmkit
    from slmkit.errors import SlmError
    from slmkit.runtime import open_model

    outcomes = {}
    for runtime, opening in (("llamacpp", lambda: open_model(str(path), logits_all=True, n_ctx=64)),
                             ("torch", lambda: slmkit.load(str(path)))):
        try:
            lm = opening()
            ids = torch.tensor([[1, 2, 3, 4]])
            lm.logits(ids, torch.ones_like(ids))
            outcomes[runtime] = "loaded"
        except SlmError as exc:
            outcomes[runtime] = "refused" if "\n" not in str(exc) else f"multi-line error: {exc!r}"
        except Exception as exc:  # what the fuzzer is looking for
            outcomes[runtime] = f"traceback: {type(exc).__name__}: {str(exc)[:200]}"
    return outcomes


def worker(source: Path, work: Path, first: int, last: int, seed: int, timeout: int) -> None:
    from slmkit.logs import quiet_libraries

    quiet_libraries()

    def hung(signum, frame):
        raise TimeoutError("hang")

    signal.signal(signal.SIGALRM, hung)
    for case in range(first, last):
        rng = random.Random(seed * 1_000_003 + case)
        kind = TARGETS[case % len(TARGETS)]
        if kind == "gguf":
            target = work / f"case-{case}.gguf"
            described, opening = mutate(source, target, case // len(TARGETS), seed), open_both
        elif kind == "safetensors":
            target = work / f"case-{case}"
            described, opening = mutate_checkpoint(source.parent / "tiny", target, rng), open_checkpoint
        else:
            name = rng.choice(sorted(DATA_FILES))
            target = work / f"case-{case}-{name}"
            shutil.copy(source.parent / name, target)
            described, opening = f"{name} " + mutate_bytes(target, rng), open_data
        print(json.dumps({"start": case, "mutation": described}), flush=True)
        signal.alarm(timeout)
        try:
            outcomes = opening(target)
        except TimeoutError:
            outcomes = {"both": "hang"}
        finally:
            signal.alarm(0)
        print(json.dumps({"case": case, "mutation": described, **outcomes}), flush=True)
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def run(cases: int, seed: int, timeout: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="slmkit-fuzz-"))
    try:
        source = build_model(work)
        results, next_case = [], 0
        while next_case < cases:
            command = [sys.executable, __file__, "--worker", str(source), str(work), str(next_case), str(cases),
                       str(seed), str(timeout)]
            process = subprocess.run(command, capture_output=True, text=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
            started = None
            for line in process.stdout.splitlines():
                record = json.loads(line)
                if "start" in record:
                    started = record
                else:
                    results.append(record)
                    started = None
            next_case = results[-1]["case"] + 1 if results else next_case
            if process.returncode != 0:  # the worker died inside a case: that case killed it
                dead = started or {"start": next_case, "mutation": "?"}
                results.append({"case": dead["start"], "mutation": dead["mutation"],
                                "both": f"signal {-process.returncode}" if process.returncode < 0
                                else f"worker exit {process.returncode}: {process.stderr.strip()[-300:]}"})
                next_case = dead["start"] + 1
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(results: list[dict]) -> dict:
    counts = Counter()
    for record in results:
        for runtime in ("llamacpp", "torch", "data", "both"):
            if runtime in record:
                counts[f"{runtime} {record[runtime].split(':')[0]}"] += 1
    return {"cases": len(results), "outcomes": dict(counts),
            "failures": [r for r in results if any(str(r.get(k, "")).startswith(("traceback", "signal", "hang",
                                                                                  "worker", "multi-line"))
                                                   for k in ("llamacpp", "torch", "data", "both"))]}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        source, work, first, last, seed, timeout = sys.argv[2:8]
        worker(Path(source), Path(work), int(first), int(last), int(seed), int(timeout))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=60, help="seconds one case may take on both runtimes")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    result = summary(run(args.cases, args.seed, args.timeout))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['cases']} mutated files (GGUF on llama.cpp and torch, safetensors, data): "
              f"{result['outcomes']}")
        for failure in result["failures"]:
            print("FAILED", json.dumps(failure))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
