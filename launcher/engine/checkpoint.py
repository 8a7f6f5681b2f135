"""Checkpoints: written to step-N.tmp by every rank, published by one rename, named by LATEST
(and by BEST when an evaluation improved the recipe's eval metric).

A reader trusts only what LATEST names, and LATEST is replaced atomically (write, fsync,
rename), so a job killed mid-save leaves the previous checkpoint in charge.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from launcher.run_dir import RunDir


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(accelerator: Any, rd: RunDir, step: int, trainer_state: dict, keep_last: int,
         best: bool = False) -> Path:
    final = rd.checkpoint(step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that was cut off
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_atomic(tmp / "trainer_state.json", json.dumps(trainer_state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(rd.checkpoints / "LATEST", final.name + "\n")
        if best:
            write_atomic(rd.checkpoints / "BEST", final.name + "\n")
        _prune(rd, keep_last, keep={final, rd.best()})
    accelerator.wait_for_everyone()
    return final


def _prune(rd: RunDir, keep_last: int, keep: set) -> None:
    done = sorted(p for p in rd.checkpoints.glob("step-*") if not p.name.endswith(".tmp"))
    for old in done[:-keep_last]:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)
