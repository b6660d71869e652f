"""The teacher cache: a teacher's top-k next-token log-probabilities, computed once, read by later epochs and
later runs instead of running the teacher (TRL's GKD recomputes them every step).

    DIR/<key>/shard-00000.safetensors   rows [first, first + SHARD_ROWS): "ids" [positions, k] int32,
                                        "logprobs" [positions, k] float16, "rest" [positions] float32 (the
                                        log-mass of the other tokens), "offsets" [rows + 1] int64
    DIR/<key>/cache.json                what the key was made from, and the shard count (written last)

Positions are each row's compared positions (distill.losses.compared: before a label), in order, so a
batch's cached rows concatenate into exactly the rows the student's logits give. The key hashes the teacher
(its spec, and the names, sizes and modification times of its files), its tokenizer's vocabulary, the
temperature and k, and the token ids and labels of every row: another teacher, data file, max_length,
packing or held-back split gets its own entry, never a stale one. Each shard and the index are written
atomically; a cache cut short is finished on the next run from its last whole shard.

`TeacherMemory` is the other way to run the teacher once: its full distributions, in memory, for one run
(QAT reads its 56 sequences ~9 times; a top-k would change what it trains).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from slmkit.distillation.losses import TopK, compared, top_k
from slmkit.errors import SlmError
from slmkit.models.checkpoint import files_identity, write_atomic

SHARD_ROWS = 256
INDEX_FILE = "cache.json"
ROW_KEY = "teacher_row"  # the example key, and the batch key, naming cached rows


def cache_key(teacher_spec: str, teacher_path: Path | None, tokenizer, rows: list[dict], temperature: float,
              k: int) -> tuple[str, dict]:
    """(hex key, what it was made from)."""
    files = files_identity(teacher_path) if teacher_path is not None else []
    vocabulary = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["input_ids"], row.get("labels")]).encode())
    made_from = {"teacher": teacher_spec, "teacher_files": files, "vocabulary_sha256": vocabulary,
                 "temperature": temperature, "top_k": k, "rows": len(rows), "rows_sha256": digest.hexdigest()}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:32], made_from


class TeacherCache:
    """The cached top-k of one teacher over one list of rows; `build` fills what is missing."""

    def __init__(self, root: str | Path, key: str, made_from: dict):
        self.directory = Path(root) / key
        self.made_from = made_from
        self.rows = made_from["rows"]
        self._shards: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def complete(self) -> bool:
        return (self.directory / INDEX_FILE).is_file()

    def _shard_path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:05d}.safetensors"

    def build(self, teacher, rows: list[dict], collate, device, progress=None) -> None:
        """Run the teacher over every row of every missing shard (`teacher_rows`) and write the shards, then the
        index."""
        from safetensors.torch import save

        if self.complete:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        shards = -(-len(rows) // SHARD_ROWS)
        for shard in range(shards):
            if self._shard_path(shard).is_file():
                continue
            ids, logprobs, rests, offsets = [], [], [], [0]
            for scored in teacher_rows(teacher, rows[shard * SHARD_ROWS:(shard + 1) * SHARD_ROWS], collate, device):
                found = top_k(scored, self.made_from["top_k"], self.made_from["temperature"])
                ids.append(found.ids.to(torch.int32).cpu())
                logprobs.append(found.logprobs.to(torch.float16).cpu())
                rests.append(found.rest.cpu())
                offsets.append(offsets[-1] + len(scored))
            tensors = {"ids": torch.cat(ids), "logprobs": torch.cat(logprobs), "rest": torch.cat(rests),
                       "offsets": torch.tensor(offsets, dtype=torch.int64)}
            write_atomic(self._shard_path(shard), save(tensors))
            if progress:
                progress(shard + 1, shards)
        write_atomic(self.directory / INDEX_FILE,
                     (json.dumps({**self.made_from, "shards": shards}, indent=2) + "\n").encode())

    def lookup(self, row_indices: list[int], device) -> TopK:
        """The cached top-k of these rows' positions, concatenated in their order."""
        parts = {"ids": [], "logprobs": [], "rest": []}
        for row in row_indices:
            shard = self._load(row // SHARD_ROWS)
            start, end = shard["offsets"][row % SHARD_ROWS], shard["offsets"][row % SHARD_ROWS + 1]
            for name, found in parts.items():
                found.append(shard[name][start:end])
        return TopK(torch.cat(parts["ids"]).long().to(device), torch.cat(parts["logprobs"]).float().to(device),
                    torch.cat(parts["rest"]).to(device))

    def _load(self, shard: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if shard not in self._shards:
            path = self._shard_path(shard)
            if not path.is_file():
                raise SlmError(f"{path}: missing from the teacher cache; remove {self.directory} to rebuild it")
            self._shards[shard] = load_file(path)
        return self._shards[shard]


def teacher_rows(teacher, rows: list[dict], collate, device, batch_size: int = 1):
    """The teacher's logits at each row's compared positions, row by row, `batch_size` rows a forward pass (one
    when the collator packs them into one row: a packed row is already max_length tokens)."""
    teacher.eval()
    for start in range(0, len(rows), batch_size):
        examples = [_without_row_key(row) for row in rows[start:start + batch_size]]
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                 for key, value in collate(examples).items()}
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = teacher(**batch).logits
        if len(logits) == len(examples):
            yield from (compared(row_logits[None], row_labels[None]) for row_logits, row_labels in zip(logits, labels))
        else:  # packed into one row
            for example in examples:
                yield from teacher_rows(teacher, [example], collate, device)


class TeacherMemory:
    """The teacher's full next-token log-probabilities at every compared position of every row, computed once
    and kept in memory in float16, for one run that reads the same rows many times.

    float16 log-probabilities keep the likely tokens' (near 0) to 0.0005 and one of -16 to 0.008; the loss
    renormalises them as it does logits (log_softmax is the same for logits and their log-probabilities, at any
    temperature). Rows are indexed as the cache's: `lookup` concatenates what `compared` gives for a batch.
    """

    def __init__(self, logprobs: list[torch.Tensor]):
        self.logprobs = logprobs

    @classmethod
    def build(cls, teacher, rows: list[dict], collate, device, max_bytes: int, batch_size: int = 1
              ) -> TeacherMemory | None:
        """The teacher run over `rows`, `batch_size` a pass; None (nothing kept) when they would take more than
        `max_bytes`: the teacher then runs each step instead."""
        tokens = sum(len(row["input_ids"]) for row in rows)  # at least the positions compared
        logprobs = []
        for scored in teacher_rows(teacher, rows, collate, device, batch_size):
            if tokens * scored.shape[-1] * 2 > max_bytes:
                return None
            logprobs.append(torch.log_softmax(scored.float(), dim=-1).half().cpu())
        return cls(logprobs)

    def lookup(self, row_indices: list[int], device) -> torch.Tensor:
        """[positions, vocabulary] float16 log-probabilities of these rows, concatenated in their order."""
        return torch.cat([self.logprobs[row] for row in row_indices]).to(device)


def _without_row_key(row: dict) -> dict:
    return {key: value for key, value in row.items() if key != ROW_KEY}


class WithRowIndex:
    """A collator that takes each example's cache row index out before the real collator sees it, and gives
    the batch's indices as a tensor under ROW_KEY."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collate([_without_row_key(example) for example in examples])
        batch[ROW_KEY] = torch.tensor([example[ROW_KEY] for example in examples])
        return batch
