"""Save and load the sharded training state: model and optimizer tensors through
torch.distributed.checkpoint (DCP), or DeepSpeed's own ZeRO checkpoint; every rank writes its
part, hashes what it wrote, and rank 0 publishes the directory (see `launcher.checkpoint`).

Nothing is loaded with pickle: tensors come from DCP (`torch.load(weights_only=True)` per
tensor, and its metadata through an unpickler that knows only DCP's own classes; an entry that
is not a tensor is refused, since DCP would unpickle it), the rest from JSON and safetensors.
DeepSpeed's own ZeRO files are unpickled by DeepSpeed, so they are scanned first
(`launcher.checkpoint.trust`) and refused when they name a global DeepSpeed never writes.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemReader
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)

from launcher.checkpoint import rng, store, trust
from launcher.run_dir import RunDir

log = logging.getLogger("launcher.engine")
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)

# DCP's metadata file is a pickle; these are the only globals it holds.
_ALLOWED = trust.DCP_CLASSES | {("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _ALLOWED or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata names {module}.{name}, which a DCP "
                                     "checkpoint never holds; refusing to load it")


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        for key, item in metadata.state_dict_metadata.items():
            # DCP would torch.load(weights_only=False) a bytes entry: ours are all tensors.
            if not isinstance(item, TensorStorageMetadata):
                raise ValueError(f"{path}: entry '{key}' is {type(item).__name__}, not a "
                                 "tensor; refusing to load it (DCP would unpickle it, which "
                                 "can run code)")
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _RecordingFileSystem(FileSystem):
    """DCP's file system, remembering the files this rank wrote (after DCP's own renames)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[Path] = []

    @contextmanager
    def create_stream(self, path: Any, mode: str):
        if "w" in mode or "a" in mode:
            self.written.append(Path(path))
        with super().create_stream(path, mode) as stream:
            yield stream

    def rename(self, path: Any, new_path: Any) -> None:
        super().rename(path, new_path)
        self.written = [Path(new_path) if p == Path(path) else p for p in self.written]


def _save_dcp(state: dict[str, Any], directory: Path) -> list[Path]:
    """DCP's collective save; the files this rank wrote (its shard; the coordinator's
    .metadata too)."""
    writer = dcp.FileSystemWriter(str(directory))
    writer.fs = recorder = _RecordingFileSystem()
    dcp.save(state, storage_writer=writer)
    return recorder.written


def _save_deepspeed(model: Any, directory: Path) -> list[Path]:
    """DeepSpeed's collective save; the files this rank wrote: what went through its checkpoint
    engine (this rank's ZeRO shard, the model states where DeepSpeed writes them) and, on
    global rank 0, the recovery scripts DeepSpeed copies beside them."""
    engine = model.checkpoint_engine
    written: list[Path] = []
    save = engine.save

    def recording_save(state_dict: Any, path: str) -> Any:
        written.append(Path(path))
        return save(state_dict, path)

    engine.save = recording_save
    try:
        # No `latest` file: loading names the tag.
        model.save_checkpoint(str(directory), tag="state", save_latest=False)
    finally:
        del engine.save  # the class's method again
    if model.global_rank == 0:
        written += [p for p in (directory / "zero_to_fp32.py", directory / "zero_to_torch.py")
                    if p.is_file()]  # this rank's own copies, not a listing
    return written


def _uses_deepspeed(model: Any) -> bool:
    return hasattr(model, "save_checkpoint") and hasattr(model, "load_checkpoint")


def _split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, {k: v for k, v in state.items() if k not in tensors}


def save(acc: Any, rd: RunDir, *, step: int, state: dict[str, Any], model: Any,
         optimizer: Any, keep_last: int, best: bool = False, group: Any = None,
         after_write: Optional[Callable[[], None]] = None) -> Path:
    """Write, hash and publish step-N on every rank together (a collective). `group`: a gloo
    group of every rank for the manifest's entries (host objects; default: the world);
    `after_write`: called once this rank's files are written, before they are published."""
    final = rd.checkpoint(step)
    tmp = final.with_name(final.name + ".tmp")
    rank, world = acc.process_index, acc.num_processes
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that was cut off
        (tmp / "rng").mkdir(parents=True)
    acc.wait_for_everyone()
    if _uses_deepspeed(model):
        written = _save_deepspeed(model, tmp / "deepspeed")
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
        tensors, groups = _split(optim_sd)
        written = _save_dcp({"model": model_sd, "optim": tensors}, tmp / "dcp")
        if acc.is_main_process:
            store.write_atomic(tmp / "optim_groups.json", json.dumps(groups) + "\n")
            written.append(tmp / "optim_groups.json")
    rng.save(tmp / "rng" / f"rank{rank}.safetensors")
    written.append(tmp / "rng" / f"rank{rank}.safetensors")
    if acc.is_main_process:
        store.write_atomic(tmp / store.STATE, json.dumps(state, indent=2) + "\n")
        written.append(tmp / store.STATE)
    if after_write is not None:
        after_write()
    # Each rank hashes what it wrote; rank 0 gets every rank's entries once all have written.
    mine = store.describe(written, tmp, rank=rank)
    shares: Optional[list[Any]] = [None] * world if acc.is_main_process else None
    if world > 1:
        dist.gather_object(mine, shares, dst=0, group=group)
    else:
        shares = [mine]
    if acc.is_main_process:
        entries: dict[str, dict[str, Any]] = {}
        for share in shares:
            for name, entry in share.items():
                if name in entries:
                    raise RuntimeError(f"ranks {entries[name]['rank']} and {entry['rank']} both "
                                       f"wrote {tmp / name}")
                entries[name] = entry
        store.write_manifest(tmp, step, entries)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        store.fsync_dir(final.parent)
        store.write_atomic(rd.checkpoints / "LATEST", final.name + "\n")
        if best:
            store.write_atomic(rd.checkpoints / "BEST", final.name + "\n")
        _prune(rd, keep_last, keep={final, rd.best()})
    acc.wait_for_everyone()
    return final


def _prune(rd: RunDir, keep_last: int, keep: set) -> None:
    done = store.complete(rd)
    for old in done[:-keep_last]:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


def load(acc: Any, path: Path, *, model: Any, optimizer: Any, saved_world: int) -> None:
    """Model, optimizer and this rank's RNG states from `path` (a collective)."""
    if _uses_deepspeed(model):
        if saved_world != acc.num_processes:
            raise RuntimeError(f"{path} was saved by {saved_world} ZeRO ranks and this job has "
                               f"{acc.num_processes}; resume ZeRO runs on the same world size")
        # DeepSpeed unpickles its files with torch.load(weights_only=False): every global they
        # name must be one DeepSpeed itself writes (the rank that chose `path` checked too).
        refused = trust.deepspeed_refusal(path / "deepspeed")
        if refused:
            raise RuntimeError(f"checkpoint {path.name} is refused: {refused}")
        model.load_checkpoint(str(path / "deepspeed"), tag="state")
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
        tensors, _ = _split(optim_sd)
        target = {"model": model_sd, "optim": tensors}
        dcp.load(target, storage_reader=_SafeReader(str(path / "dcp")))
        groups = json.loads((path / "optim_groups.json").read_text())
        set_state_dict(model, optimizer, model_state_dict=target["model"],
                       optim_state_dict={**target["optim"], **groups}, options=_OPTIONS)
    saved_rng = path / "rng" / f"rank{acc.process_index}.safetensors"
    if saved_world == acc.num_processes and saved_rng.is_file():
        rng.load(saved_rng)
    else:
        # Another world size: rank r's dropout stream cannot be the one it had; a fresh one
        # per rank and step keeps runs reproducible.
        log.info("world size changed (%d -> %d): fresh RNG streams", saved_world,
                 acc.num_processes)


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model's full weights from a checkpoint, in one process (for eval and predict)."""
    if (path / "deepspeed").is_dir():
        raise ValueError(f"{path} is a DeepSpeed ZeRO checkpoint; evaluate the run's final/ "
                         "export, or a checkpoint of a ddp or fsdp run")
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = _SafeReader(str(path / "dcp"))
    meta = reader.read_metadata()
    target = {}
    for key, item in meta.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(item, TensorStorageMetadata):
            target[key[len("model."):]] = torch.empty(item.size, dtype=item.properties.dtype)
    dcp.load({"model": target}, storage_reader=_SafeReader(str(path / "dcp")), no_dist=True)
    return target
