"""Which checkpoint a run can trust, without torch: manifests, LATEST, and the fallback.

A checkpoint directory is published by one rename after every rank has written its files,
and its `manifest.json` lists each file with its size, its sha256 and the rank that wrote it.
A reader starts from the checkpoint LATEST names, verifies it against its manifest, and walks
back to older complete checkpoints when a file is missing, truncated or changed, or holds
something that could run code when loaded (`checkpoint_scan`) -- with a warning that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from launcher import checkpoint_scan
from launcher.run_dir import RunDir

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
FORMAT = 1


def write_atomic(path: Path, text: str) -> None:
    """Readers see the old content or the new, never a part (write, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a crash after it cannot bring the old name back)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def describe(paths: list[Path], root: Path,
             rank: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """Manifest entries for `paths` (the files `rank` wrote); hashed on threads (hashlib lets
    go of the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(sha256, paths))
    who = {} if rank is None else {"rank": rank}
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": d, **who}
            for p, d in zip(paths, digests)}


def write_manifest(directory: Path, step: int, entries: dict[str, dict[str, Any]]) -> None:
    manifest = {"format": FORMAT, "step": step, "files": dict(sorted(entries.items()))}
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def problem(directory: Path) -> Optional[str]:
    """None when every file the manifest lists is there with its size and sha256; else what
    is wrong, naming the file."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing"
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"{manifest} cannot be read ({err})"
    for name, want in listed.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != want["size"]:
            return f"{path} has {path.stat().st_size} bytes, the manifest says {want['size']}"
    names = list(listed)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda n: sha256(directory / n), names))
    for name, digest in zip(names, digests):
        if digest != listed[name]["sha256"]:
            return f"{directory / name} does not match its sha256 in the manifest"
    return None


def step_of(directory: Path) -> int:
    return int(directory.name.split("-")[-1])


def complete(rd: RunDir) -> list[Path]:
    """Published checkpoint directories, oldest first (a `.tmp` is a save that never finished)."""
    if not rd.checkpoints.is_dir():
        return []
    return sorted(p for p in rd.checkpoints.glob("step-*")
                  if p.is_dir() and not p.name.endswith(".tmp"))


@dataclass
class Choice:
    path: Optional[Path]  # the checkpoint to resume from; None: start from scratch
    warnings: list[str] = field(default_factory=list)


def choose(rd: RunDir) -> Choice:
    """The newest checkpoint at or before LATEST whose files all match its manifest."""
    latest = rd.latest()
    if latest is None:
        return Choice(None)
    choice = Choice(None)
    for candidate in reversed([p for p in complete(rd) if step_of(p) <= step_of(latest)]):
        wrong = problem(candidate)
        if wrong is not None:
            choice.warnings.append(f"checkpoint {candidate.name} is damaged: {wrong}")
            continue
        refused = checkpoint_scan.refusal(candidate)
        if refused is not None:
            choice.warnings.append(f"checkpoint {candidate.name} is refused: {refused}")
            continue
        choice.path = candidate
        return choice
    return choice


def loadable(rd: RunDir) -> Choice:
    """The newest checkpoint at or before LATEST that is safe to load (nothing in it could
    run code), without hashing: what is checked before launching. The engine checks again
    with `choose`, hashes included."""
    latest = rd.latest()
    choice = Choice(None)
    if latest is None:
        return choice
    for candidate in reversed([p for p in complete(rd) if step_of(p) <= step_of(latest)]):
        refused = checkpoint_scan.refusal(candidate)
        if refused is None:
            choice.path = candidate
            return choice
        choice.warnings.append(f"checkpoint {candidate.name} is refused: {refused}")
    return choice


def read_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / STATE).read_text())


def fingerprint(recipe: Any, labels: tuple) -> dict[str, Any]:
    """What a checkpoint's weights are shaped by: another value means another model."""
    m = recipe.model
    return {"model.name": m.name, "task.type": recipe.task.type, "task.labels": list(labels),
            "model.head_hidden": m.head_hidden,
            "model.config_overrides": dict(sorted(dict(m.config_overrides).items()))}


def data_order(recipe: Any) -> dict[str, Any]:
    """What a saved data position means: under other values it would skip or repeat examples."""
    d = recipe.data
    return {"data.train": d.train, "data.streaming": d.streaming, "data.shuffle": d.shuffle,
            "data.shuffle_window": d.shuffle_window if d.streaming and d.shuffle else None,
            "run.seed": recipe.run.seed if d.shuffle else None,
            # steps are cut by the token budget (engine/budget.py); absent means none
            **({"scale.tokens_per_step": recipe.scale.tokens_per_step}
               if recipe.scale.tokens_per_step else {})}


UNRECORDED_ORDER = ("it was written before checkpoints recorded their data order, by a "
                    "launcher that read the data in file order")


def order_problems(state: dict[str, Any], recipe: Any) -> list[str]:
    saved = state.get("data_order")
    if saved is None:  # a launcher from before data.shuffle: its position counts file order
        at = state.get("position", {})
        mid_epoch = bool(at.get("row") or at.get("examples"))
        return [f"{UNRECORDED_ORDER}, and the recipe shuffles it (data.shuffle=true)"
                ] if recipe.data.shuffle and mid_epoch else []
    return differences(saved, data_order(recipe))


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{key} was {saved.get(key)!r}, the recipe now says {now.get(key)!r}"
            for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]


def incompatible(state: dict[str, Any], now: dict[str, Any], global_batch: int) -> list[str]:
    """Why a checkpoint cannot go on under this recipe and plan (empty: it can). Checked
    before launching and again by the engine, which a requeued job reaches directly."""
    problems = differences(state.get("fingerprint", {}), now)
    if state["global_batch"] != global_batch and not (state["global_batch"] and global_batch):
        problems.append("the run was started with a token budget (scale.tokens_per_step) and "
                        "the plan has a global batch, or the other way round")
    elif state["global_batch"] != global_batch:
        # The data position is counted in global batches.
        problems.append(f"the global batch was {state['global_batch']} and the plan has "
                        f"{global_batch} (set scale.global_batch={state['global_batch']})")
    return problems
