"""Where examples come from: a local file or a hub dataset name.

The plan uses this to check columns and rows before anything runs; the engine uses it to open
the same source as a stream.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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


def open_stream(src: Source, *, streaming: bool):
    """The source as an HF `IterableDataset` (hub code path kept as users write it)."""
    import datasets

    if src.is_local:
        ds = datasets.load_dataset(src.builder, data_files=str(src.path), split="train",
                                   streaming=streaming)
    else:
        ds = datasets.load_dataset(src.builder, src.config, split=src.split, streaming=streaming)
    return ds if streaming else ds.to_iterable_dataset()
