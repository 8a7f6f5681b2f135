"""Lock files that killed builds of torch C++ extensions left behind, found before they hang a run.

DeepSpeed builds its C++ ops (on CPU the shared-memory comm `deepspeed_shm_comm` and
`cpu_adam`; on GPUs `cpu_adam` for the optimizer offload, and others) with torch's JIT
`cpp_extension.load`, which takes `<build dir>/lock` (torch/utils/file_baton.py: an empty file
made with O_CREAT|O_EXCL, removed when the build ends). A build killed on the way (Slurm
preemption or scancel, the OOM killer, Ctrl-C, a timeout) leaves the file, and every later
load of that op waits on it forever, printing nothing (pytorch#189245; torch 2.13's
FileBaton.wait has no timeout). On a cluster the cache is in the shared home of every node,
and the job that hangs is the requeue after the preemption that killed the build.

The file is never written after it is made, so its mtime is when the build began. Nothing
here imports torch: `launcher run` checks before a job is submitted, the engine again on every
rank before DeepSpeed is set up (a requeued Slurm job never passes the CLI).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from launcher.errors import RecipeError

# A lock older than this is a build that no longer runs. Measured here: the two CPU ops build in
# ~1-1.5 min on 2 cores; CUDA ops take a few minutes (more with many archs in
# TORCH_CUDA_ARCH_LIST). 30 min is far beyond any of them, on a loaded node too, and still far
# below what a hung job wastes (its whole time limit). NFS mtimes come from the server's clock:
# minutes of skew do not matter at this scale.
STALE_AFTER_S = 30 * 60


class StaleBuildLock(RecipeError):
    """A build lock no build holds: the CLI prints it as any RecipeError (exit 2), the engine
    as its one-line refusal (engine/main.py)."""


def build_root() -> tuple[Path, bool]:
    """(the root torch builds extensions under, whether it is the default root).

    As torch.utils.cpp_extension._get_build_directory: TORCH_EXTENSIONS_DIR as given, else
    get_default_build_root() (torch._appdirs.user_cache_dir: XDG_CACHE_HOME or ~/.cache,
    ~/Library/Caches on macOS, then `torch_extensions`, realpath'd). Only under the default
    root does torch add a `py311_cu128`-like folder per Python and accelerator.
    """
    given = os.environ.get("TORCH_EXTENSIONS_DIR")
    if given is not None:
        return Path(given), False
    if sys.platform == "darwin":
        cache = os.path.expanduser("~/Library/Caches")
    else:
        cache = os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return Path(os.path.realpath(os.path.join(cache, "torch_extensions"))), True


def locks() -> list[Path]:
    """Every build lock torch's JIT builds in this Python would wait on (any op: DeepSpeed's op
    names come from DeepSpeed, which imports torch, and a stale lock is stale whoever left
    it). Under the default root: this Python's folders for any accelerator (which one torch
    picks needs torch; a stale lock under another is as harmless to delete)."""
    root, default = build_root()
    if default:
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        pattern = f"{python}_*/*/lock"
    else:
        pattern = "*/lock"
    try:
        return sorted(root.glob(pattern))
    except OSError:  # an unreadable cache: torch will say so itself
        return []


def stale_locks(now: Optional[float] = None) -> list[tuple[Path, float]]:
    """(lock, age in seconds) of each lock older than STALE_AFTER_S, oldest first."""
    now = time.time() if now is None else now
    found = []
    for path in locks():
        try:
            age = now - path.stat().st_mtime
        except OSError:  # its build just ended and removed it
            continue
        if age > STALE_AFTER_S:
            found.append((path, age))
    return sorted(found, key=lambda item: -item[1])


def uses_deepspeed(strategy: str) -> bool:
    return strategy.startswith("zero")


def check(strategy: str) -> None:
    """Refuse a DeepSpeed strategy while a stale build lock would hang its op loads: one line
    naming the lock, its age and the fix. Young locks are builds of other jobs: wait on them."""
    if not uses_deepspeed(strategy):
        return
    stale = stale_locks()
    if not stale:
        return
    path, age = stale[0]
    more = f" (and {len(stale) - 1} more stale lock(s) beside it)" if len(stale) > 1 else ""
    raise StaleBuildLock(
        "scale.strategy",
        f"is {strategy} (DeepSpeed), whose C++ op loads would wait forever on {path}: a torch "
        f"extension build lock {_age(age)} old{more}, left by a build that was killed "
        f"(no build takes over {STALE_AFTER_S // 60} min)",
        f"no build is running: delete {'it' if len(stale) == 1 else 'them'} "
        f"(rm {' '.join(shlex.quote(str(p)) for p, _ in stale)}) and run again")


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"
