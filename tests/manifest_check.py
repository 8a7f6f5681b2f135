"""The manifest of a checkpoint lists exactly what each rank wrote, attributed to that rank."""

from __future__ import annotations

import json
from pathlib import Path

from launcher.checkpoint import store

ZERO = ("zero1", "zero2", "zero3", "zero3_offload")


def expected_files(rank: int, strategy: str) -> set[str]:
    """What rank `rank` writes into a checkpoint (ZeRO-1/2: rank 0 alone saves the model)."""
    mine = {f"rng/rank{rank}.safetensors"}
    if strategy in ZERO:
        mine.add(f"deepspeed/state/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        if rank == 0:
            mine |= {"deepspeed/state/mp_rank_00_model_states.pt", "trainer_state.json"}
    else:
        mine.add(f"dcp/__{rank}_0.distcp")
        if rank == 0:
            mine |= {"dcp/.metadata", "optim_groups.json", "trainer_state.json"}
    return mine


def assert_manifest_is_what_each_rank_wrote(ckpt: Path, world: int, strategy: str) -> None:
    files = json.loads((ckpt / store.MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {store.MANIFEST}, "the manifest is not the union"
    for rank in range(world):
        wrote = {name for name, entry in files.items() if entry["rank"] == rank}
        extra = wrote - expected_files(rank, strategy)
        if rank == 0 and strategy in ZERO:
            # DeepSpeed's global rank 0 copies its recovery scripts beside the checkpoint.
            extra = {n for n in extra if not n.startswith("deepspeed/zero_to_")}
        assert not extra and expected_files(rank, strategy) <= wrote, (rank, sorted(wrote))
    assert {entry["rank"] for entry in files.values()} == set(range(world))
    assert store.problem(ckpt) is None
