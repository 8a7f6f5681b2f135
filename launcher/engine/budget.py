"""Token budgets (scale.tokens_per_step, scale.micro_tokens): which examples make a step, and
how a step's examples become each rank's micro batches.

Everything here is a function of the epoch's order, every example's token length and the
budgets, never of the world size or of the rank: each rank computes the same steps and the
same micro batches without talking to the others, a step trains the same examples at any
world size, and a resume on another world size goes on exactly.

- A step takes examples in the epoch's order while their real tokens stay within
  tokens_per_step (so only the epoch's last step is short of it).
- Its examples, longest first, fill micro batches of at most micro_tokens tokens: rows x the
  longest row rounded up to data.pad_to_multiple_of, or with data.packing the rows that
  first-fit-decreasing packing makes (packing.plan_rows) x data.max_length.
- Micro batch j goes to rank j % world. Every rank runs the same number of forwards (sharded
  weights are gathered inside them): a rank with fewer micro batches runs zero-weight ones.

The lengths come from the task's own encoding of every non-empty row, done once per prepared
split and tokenizer (a file next to the Arrow cache, under a lock) and read by every rank.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from launcher import sources

log = logging.getLogger("launcher.engine")

_CHUNK = 1000
_memo: dict[str, np.ndarray] = {}


def step_ends(order_lengths: np.ndarray, start: int, budget: int) -> list[int]:
    """The positions where each step from `start` to the epoch's end stops (exclusive)."""
    cum = np.cumsum(order_lengths, dtype=np.int64)
    ends, at = [], start
    while at < len(order_lengths):
        base = cum[at - 1] if at else 0
        end = int(np.searchsorted(cum, base + budget, side="right"))
        at = max(end, at + 1)  # an example longer than the budget is refused at planning
        ends.append(at)
    return ends


def micro_batches(lengths: list[int], micro_tokens: int, pad_multiple: int,
                  pack_to: Optional[int], rows_multiple: int = 1) -> list[list[int]]:
    """A step's examples (their lengths, in the step's order) as micro batches of indices,
    longest first, each within micro_tokens tokens as the engine will lay it out."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    room: list[int] = []  # packed: free tokens of each row of the current micro batch
    widest = 0
    for i in order:
        n = lengths[i]
        if out:
            rows = (len(room) + (0 if any(n <= free for free in room) else 1) if pack_to
                    else len(out[-1]) + 1)
            if micro_cost(rows, widest, pad_multiple, pack_to, rows_multiple) <= micro_tokens:
                out[-1].append(i)
                if pack_to:
                    _first_fit(room, n, pack_to)
                continue
        out.append([i])
        widest, room = n, []
        if pack_to:
            _first_fit(room, n, pack_to)
    return out


def micro_cost(rows: int, widest: int, pad_multiple: int, pack_to: Optional[int],
               rows_multiple: int = 1) -> int:
    """The tokens a micro batch of `rows` rows takes as the engine lays it out: packed rows of
    pack_to tokens (their count rounded up to rows_multiple), or rows x the widest row rounded
    up to pad_multiple. Planning checks scale.micro_tokens against one example's cost."""
    if pack_to:
        return -(-rows // rows_multiple) * rows_multiple * pack_to
    return rows * (-(-widest // pad_multiple) * pad_multiple)


def _first_fit(room: list[int], n: int, capacity: int) -> None:
    # Longest first, so first fit here is the first-fit decreasing that packing.pack does.
    for r, free in enumerate(room):
        if n <= free:
            room[r] -= n
            return
    room.append(capacity - n)


def forwards(count: int, world: int) -> int:
    """Forwards every rank runs for a step of `count` micro batches (at least one)."""
    return max(1, -(-count // world))


def epoch_steps(order_lengths: np.ndarray, budget: int) -> int:
    return len(step_ends(order_lengths, 0, budget))


def lengths(prepared: sources.Prepared, task: Any, tokenizer: Any) -> np.ndarray:
    """Tokens of each non-empty row (aligned with prepared.keep) as the task encodes it,
    truncation included: computed once per split, task and tokenizer, then read."""
    from filelock import FileLock

    ds = prepared.rows
    d = task.data
    ident = _tokenizer_ident(tokenizer)
    tag = hashlib.sha256(repr((ds._fingerprint, task.type, task.cols, d.max_length, ident,
                               len(prepared.keep))).encode()).hexdigest()[:16]
    if tag in _memo:
        return _memo[tag]
    where = Path(ds.cache_files[0]["filename"]).parent if ds.cache_files else None
    path = where / f"launcher-lengths-{tag}.npy" if where else None
    if path is not None:
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                found = _encode_lengths(prepared, task, tokenizer)
                tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
                np.save(tmp, found)
                os.replace(tmp, path)
            found = np.load(path)
    else:
        found = _encode_lengths(prepared, task, tokenizer)
    _memo[tag] = found
    return found


def _encode_lengths(prepared: sources.Prepared, task: Any, tokenizer: Any) -> np.ndarray:
    keep = np.asarray(prepared.keep)
    out = np.empty(len(keep), dtype=np.int64)
    for start in range(0, len(keep), _CHUNK):
        chunk = keep[start:start + _CHUNK].tolist()
        enc = task.encode(prepared.read(chunk), tokenizer, indices=chunk, labeled=False)
        out[start:start + len(chunk)] = enc["inputs"]["attention_mask"].sum(dim=1).numpy()
    log.info("data: token lengths of %d examples computed (mean %.1f, max %d)", len(out),
             float(out.mean()) if len(out) else 0.0, int(out.max()) if len(out) else 0)
    return out


def _tokenizer_ident(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return f"{type(tokenizer).__name__}:{hashlib.sha256(text.encode()).hexdigest()}"
