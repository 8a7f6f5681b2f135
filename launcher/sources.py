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

    files: tuple = ()  # a local source's files: one, or those a pattern (parts/*.jsonl) matches

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def data_files(self) -> Any:
        """HF load_dataset's data_files: each file is one shard of a stream."""
        return [str(f) for f in self.files] if len(self.files) > 1 else str(self.path)


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def resolve(name: str, *, config: Optional[str], split: str) -> Source:
    """A name with a data file's extension, or written as a path (/, ./, ~), is a local file,
    or several files when it is a pattern (data/part-*.jsonl, in name order); anything else
    (ag_news, org/name) is a hub dataset."""
    suffix = Path(name).suffix.lower()
    if suffix in FORMATS or name.startswith(("/", "./", "../", "~")):
        path = Path(name).expanduser().absolute()
        if is_pattern(name):
            import glob

            files = tuple(Path(f).resolve() for f in sorted(glob.glob(str(path))))
            return Source(name, FORMATS.get(suffix, ""), files[0] if files else path, None,
                          "train", files)
        path = path.resolve()
        return Source(name, FORMATS.get(suffix, ""), path, None, "train", (path,))
    return Source(name, name, None, config, split)


class BadData(ValueError):
    """A local data file that cannot be read as rows: where in it (line or row) and what is
    wrong. Planning turns it into one line naming the recipe field; nothing is launched."""

    def __init__(self, path: Path, where: str, problem: str):
        self.path, self.where, self.problem = path, where, problem
        super().__init__(f"{path}{' ' + where if where else ''}: {problem}")

    @property
    def fix(self) -> str:
        if self.where.startswith("line"):
            return ("correct or remove that line (every row of a local file is read before "
                    "launch)")
        return "write the file again (every row of a local file is read before launch)"


def columns(src: Source) -> list[str]:
    """Column names of a local file, read from its first row or schema only."""
    assert src.path is not None
    if src.builder == "json":
        for row in _json_rows(src.path):
            return list(row.keys())
        return []
    if src.builder == "csv":
        return next(_csv_records(src.path), (0, []))[1]
    return list(_parquet_file(src.path).schema_arrow.names)


def read_rows(src: Source) -> Iterator[dict]:
    """Rows of a local file as the engine's HF loaders give them, without importing datasets
    (whose IterableDataset imports torch): planning stays a light step on a login node.

    Every line is parsed, so a malformed one (bad JSON, a CSV row with the wrong number of
    fields, an unreadable parquet) raises `BadData` naming the line before anything runs.
    The file is streamed: a large one is never held in memory whole."""
    assert src.path is not None
    if len(src.files) > 1:
        import dataclasses

        for f in src.files:
            yield from read_rows(dataclasses.replace(src, path=f, files=(f,)))
        return
    if src.builder == "json":
        yield from _json_rows(src.path)
    elif src.builder == "csv":
        import pandas as pd  # HF's CSV loader reads with pandas too: same types per column

        # pandas fills a short row with NaN and names no line for most problems: a pass
        # with the csv module checks the shape of every record first.
        for _ in _csv_records(src.path):
            pass
        try:
            for chunk in pd.read_csv(src.path, chunksize=10_000):
                chunk = chunk.astype(object).where(chunk.notna(), None)
                yield from chunk.to_dict("records")
        except (ValueError, pd.errors.ParserError) as err:
            raise BadData(src.path, "", f"cannot be read as CSV ({err})") from None
    else:
        import pyarrow as pa

        start = 0
        batches = _parquet_file(src.path).iter_batches(batch_size=10_000)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as err:
                raise BadData(src.path, f"rows from {start}", f"cannot be read ({err})") from None
            start += batch.num_rows
            yield from batch.to_pylist()


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), "null")


def _json_rows(path: Path) -> Iterator[dict]:
    """JSON Lines (or one JSON array of rows), each row an object."""
    for where, row in _json_objects(path):
        if not isinstance(row, dict):
            raise BadData(path, where, f"is {_json_kind(row)}, not an object of column values")
        yield row


def _json_objects(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as fh:
        head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        fh.seek(0)
        if head.startswith(b"["):  # one JSON array of rows: it has to be read whole
            text = _decode(path, fh.read(), "").removeprefix("\ufeff")
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as err:
                raise BadData(path, f"line {err.lineno}", f"is not valid JSON ({err.msg}, "
                              f"column {err.colno})") from None
            except (ValueError, RecursionError) as err:
                raise BadData(path, "", f"is not valid JSON ({err})") from None
            if not isinstance(rows, list):
                raise BadData(path, "", "is not a JSON array of rows")
            for i, row in enumerate(rows):
                yield f"row {i}", row
            return
        for number, raw in enumerate(fh, 1):
            where = f"line {number}"
            text = _decode(path, raw, where)
            if number == 1:
                text = text.removeprefix("\ufeff")  # a BOM, as editors on Windows write it
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as err:
                raise BadData(path, where, f"is not valid JSON ({err.msg}, column "
                              f"{err.colno})") from None
            except (ValueError, RecursionError) as err:
                raise BadData(path, where, f"is not valid JSON ({err})") from None


def _decode(path: Path, raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadData(path, where, f"is not UTF-8 text (byte {raw[err.start]:#04x} at offset "
                      f"{err.start})") from None


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of every record after checking it against the header's field count;
    the header itself comes first."""
    csv.field_size_limit(2**31 - 1)  # long documents are real data; pandas has no limit
    with path.open("rb") as fh:
        lines = (_decode(path, raw, f"line {n}").removeprefix("\ufeff" if n == 1 else "")
                 for n, raw in enumerate(fh, 1))
        reader = csv.reader(lines, strict=True)
        start, header = 1, None
        try:
            for record in reader:
                if header is None:
                    header = record
                elif record and len(record) != len(header):
                    raise BadData(path, f"line {start}", f"has {len(record)} fields but the "
                                  f"header has {len(header)} ({', '.join(header)})")
                if record:
                    yield start, record
                start = reader.line_num + 1
        except csv.Error as err:
            raise BadData(path, f"line {start}", f"is not valid CSV ({err})") from None
        if header is None:
            raise BadData(path, "", "is empty (a CSV file needs a header row)")


def _parquet_file(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise BadData(path, "", f"is not a readable parquet file ({err})") from None


def open_stream(src: Source, *, streaming: bool):
    """The source as an HF `IterableDataset` (hub code path kept as users write it)."""
    import datasets

    if src.is_local:
        ds = datasets.load_dataset(src.builder, data_files=src.data_files, split="train",
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
    ident = hashlib.sha256(repr((src.builder, src.data_files, src.config, src.split))
                           .encode()).hexdigest()[:16]
    (cache / "launcher_locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / "launcher_locks" / f"{ident}.lock")):
        if src.is_local:
            ds = datasets.load_dataset(src.builder, data_files=src.data_files, split="train")
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
