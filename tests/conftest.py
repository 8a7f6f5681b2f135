"""Shared helpers: run the real CLI in a subprocess, offline, from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# In-process plan building reads local files through HF datasets: never let it reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny_news.py"


def cli_env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", COLUMNS="400",
                PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu")


def launcher(*args: str, timeout: int = 300, fault: str | None = None) -> subprocess.CompletedProcess:
    """`python -m launcher ARGS`; `fault` is a LAUNCHER_FAULT spec (launcher/engine/faults.py)."""
    env = cli_env()
    if fault:
        env["LAUNCHER_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def repo() -> Path:
    return REPO


def decoded_per_epoch(rd) -> list[tuple[int, int, int, int]]:
    """(rank, epoch, rows decoded, own examples) from each rank's log: the data counter each
    rank logs when it hands over an epoch's last batch."""
    import re

    found = []
    for log in sorted(rd.logs.glob("rank*.log")):
        rank = int(log.stem[4:])
        for m in re.finditer(r"data: epoch (\d+): this rank decoded (\d+) rows for (\d+) "
                             r"examples of its own", log.read_text()):
            found.append((rank, int(m[1]), int(m[2]), int(m[3])))
    return found
