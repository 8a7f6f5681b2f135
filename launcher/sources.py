"""Where examples come from: a local file or a hub dataset name.

The plan uses this to check columns and rows before anything runs; the engine uses it to open
the same source as a stream.
"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Source:
    """A local file (`path` set, `builder` is the HF loader for its format) or a hub dataset."""

    name: str
    builder: str
    path: Optional[Path]
    config: Optional[str]
    split: str

    @property
    def is_local(self) -> bool:
        return self.path is not None


def resolve(name: str, *, config: Optional[str], split: str) -> Source:
    """A name with a data file's extension, or written as a path (/, ./, ~), is a local file;
    anything else (ag_news, org/name) is a hub dataset."""
    suffix = Path(name).suffix.lower()
    if suffix in FORMATS or name.startswith(("/", "./", "../", "~")):
        path = Path(name).expanduser().resolve()
        return Source(name, FORMATS.get(suffix, ""), path, None, "train")
    return Source(name, name, None, config, split)


def columns(src: Source) -> list[str]:
    """Column names of a local file, read from its first row or schema only."""
    assert src.path is not None
    if src.builder == "json":
        with src.path.open() as fh:
            for line in fh:
                if line.strip():
                    return list(json.loads(line).keys())
        return []
    if src.builder == "csv":
        with src.path.open(newline="") as fh:
            return next(csv.reader(fh), [])
    import pyarrow.parquet as pq
    return list(pq.read_schema(src.path).names)


def read_rows(src: Source) -> Iterator[dict]:
    """Rows of a local file as the engine's HF loaders give them, without importing datasets
    (whose IterableDataset imports torch): planning stays a light step on a login node."""
    assert src.path is not None
    if src.builder == "json":
        with src.path.open() as fh:
            head = fh.read(1).lstrip()
            fh.seek(0)
            if head == "[":  # one JSON array of rows
                yield from json.load(fh)
                return
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    elif src.builder == "csv":
        import pandas as pd  # HF's CSV loader reads with pandas too: same types per column

        for chunk in pd.read_csv(src.path, chunksize=10_000):
            chunk = chunk.astype(object).where(chunk.notna(), None)
            yield from chunk.to_dict("records")
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(src.path).iter_batches(batch_size=10_000):
            yield from batch.to_pylist()


def open_stream(src: Source, *, streaming: bool):
    """The source as an HF `IterableDataset` (hub code path kept as users write it)."""
    import datasets

    if src.is_local:
        ds = datasets.load_dataset(src.builder, data_files=str(src.path), split="train",
                                   streaming=streaming)
    else:
        ds = datasets.load_dataset(src.builder, src.config, split=src.split, streaming=streaming)
    return ds if streaming else ds.to_iterable_dataset()


def iter_rows(ds: Any, start: int = 0, batch_size: int = 1024) -> Iterator[dict]:
    """The rows of an HF `IterableDataset` from row `start` on, in order.

    `IterableDataset.__iter__` splits its shards between DataLoader workers when it finds itself
    inside one; our streams do their own splitting, so they read through `iter()`, which does
    not. `skip` stays on HF's arrow path: no row before `start` is turned into Python.
    """
    if not hasattr(ds, "iter"):  # rows already in memory (predict)
        yield from itertools.islice(ds, start, None)
        return
    if start:
        ds = ds.skip(start)
    for batch in ds.iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


@dataclass
class Prepared:
    """A split prepared once as memory-mapped Arrow, read by row index.

    `keep` holds the indices of the rows that are not empty, found once at preparation time,
    so no reader has to look at a row it will not train on.
    """

    rows: Any              # a datasets.Dataset (memory-mapped)
    keep: Any              # numpy int64 array: the non-empty rows' indices, ascending

    def read(self, indices: Any) -> list[dict]:
        """The rows at these indices, in this order (only they are turned into Python)."""
        indices = [int(i) for i in indices]
        if not indices:
            return []
        batch = self.rows[indices]
        keys = list(batch)
        return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]


def prepare(src: Source, columns: list[str], is_empty: Any) -> Prepared:
    """`load_dataset` without streaming (the split as Arrow in the HF datasets cache), plus the
    non-empty rows' indices next to it. A file lock per source makes one process (per node, or
    per job on a shared cache) prepare while the others wait, then they all map the same files.

    `is_empty` sees only `columns` (the task's text columns): the one pass that finds the
    empty rows reads nothing else.
    """
    import hashlib
    import os

    import datasets
    import numpy as np
    from filelock import FileLock

    cache = Path(datasets.config.HF_DATASETS_CACHE)
    ident = hashlib.sha256(repr((src.builder, str(src.path), src.config, src.split))
                           .encode()).hexdigest()[:16]
    (cache / "launcher_locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / "launcher_locks" / f"{ident}.lock")):
        if src.is_local:
            ds = datasets.load_dataset(src.builder, data_files=str(src.path), split="train")
        else:
            ds = datasets.load_dataset(src.builder, src.config, split=src.split)
        where = Path(ds.cache_files[0]["filename"]).parent if ds.cache_files else None
        columns = [c for c in columns if c in ds.column_names]
        tag = hashlib.sha256(f"{ds._fingerprint}|{columns}|{is_empty.__qualname__}"
                             .encode()).hexdigest()[:16]
        path = where / f"launcher-nonempty-{tag}.npy" if where else None
        if path is not None and path.is_file():
            keep = np.load(path, mmap_mode="r")
        else:
            found, texts = [], ds.select_columns(columns)
            for start in range(0, len(ds), 10_000):
                batch = texts[start:start + 10_000]
                keys = list(batch)
                for i, values in enumerate(zip(*(batch[k] for k in keys)), start=start):
                    if not is_empty(dict(zip(keys, values))):
                        found.append(i)
            keep = np.asarray(found, dtype=np.int64)
            if path is not None:
                tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
                np.save(tmp, keep)
                os.replace(tmp, path)
    return Prepared(ds, keep)
