"""What in a checkpoint could run code when it is loaded, found without loading it (no torch).

Anyone who can write a run directory can also re-sign a checkpoint's manifest, so a manifest
proves only that files are whole, not who wrote them. Two parts of a checkpoint are read by
code that would unpickle arbitrary objects:

- DCP's metadata lists every entry with its storage type. For a `BytesStorageMetadata` entry
  torch's DCP loader calls `torch.load(weights_only=False)` on the bytes; our checkpoints
  hold tensors only, so any other type is refused, naming the key.
- DeepSpeed loads its own ZeRO files with `torch.load(weights_only=False)`. Every pickle in
  `deepspeed/` is read opcode by opcode (pickletools, nothing executed) and refused if it
  names a global outside `DEEPSPEED_GLOBALS`: what DeepSpeed itself writes.

`refusal(directory)` is None for a checkpoint that passes, else one line saying why not.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

# Every global in the pickles of real checkpoints written by DeepSpeed 0.19.8 with torch 2.13:
# ZeRO-1, -2, -3 and -3 offload of the tiny recipe on 2 ranks in fp32, and ZeRO-1/2/3 in bf16
# (found by saving them and running `torch_file_globals` on every file). fp16 cannot run on
# CPU; from DeepSpeed's source, its ZeRO optimizers store a DynamicLossScaler (whose `dtype`
# is torch.float16) and its weights are half storages. What each is:
# - torch's own tensor rebuilders, typed storages, Size, Tensor and dtypes: what torch.save
#   writes for tensors (torch's weights_only unpickler allows the same);
# - OrderedDict: state dicts;
# - DeepSpeed's ZeroStageEnum, its loss scalers (plain attribute bags: cur_scale, ...) and
#   fragment_address (a dataclass of two ints) in the ZeRO optimizer's state.
# None of them runs anything the file names: classes are built from plain values.
DEEPSPEED_GLOBALS = frozenset({
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._tensor", "_rebuild_from_type_v2"),  # ZeRO-3's flat fp32 partitions
    ("torch", "Tensor"),
    ("torch", "FloatStorage"), ("torch", "BFloat16Storage"), ("torch", "HalfStorage"),
    ("torch", "Size"),
    ("torch", "float32"), ("torch", "bfloat16"), ("torch", "float16"),
    ("collections", "OrderedDict"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
})


def _not_a_pickle(path: Path) -> bool:
    """What DeepSpeed writes into deepspeed/ and never unpickles: the tag name and its
    conversion scripts (zero_to_fp32.py, zero_to_torch.py). Every other file is scanned."""
    return path.name == "latest" or path.suffix == ".py"


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
            "BINSTRING", "SHORT_BINSTRING"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_QUIET = {"PROTO", "FRAME"}  # no effect on the stack
_EXTENSIONS = {"EXT1", "EXT2", "EXT4"}  # globals by copyreg code: unknowable here


class Refused(Exception):
    """A pickle names something it may not, or cannot be read well enough to tell."""


def pickle_globals(data: bytes | io.BufferedIOBase, *, count: Optional[int] = 1) -> list[str]:
    """'module.name' of every global the pickle(s) in `data` would look up, without running
    them. `count` consecutive pickles are read (None: until the data ends)."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    found: list[str] = []
    read = 0
    while count is None or read < count:
        start = stream.tell()
        if not stream.read(1):
            break
        stream.seek(start)
        found.extend(_globals_of_one(stream))
        read += 1
    return found


def _globals_of_one(stream: Any) -> Iterator[str]:
    # A shadow stack that knows only strings: STACK_GLOBAL takes module and name from the top
    # two stack items, so they are named only when the two ops before it (memo writes aside)
    # pushed known strings; anything else pushes "unknown" and a STACK_GLOBAL then is refused.
    top: list[Optional[str]] = []
    memo: dict[int, Optional[str]] = {}
    protocol = 0
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name == "PROTO":
                protocol = int(arg)
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                yield _resolved(module, attr, protocol)
                top.append(None)
            elif name == "STACK_GLOBAL":
                if len(top) < 2 or top[-1] is None or top[-2] is None:
                    raise Refused("a STACK_GLOBAL whose module and name are not plain strings")
                yield _resolved(top[-2], top[-1], protocol)
                top.append(None)
            elif name in _EXTENSIONS:
                raise Refused(f"a {name} opcode (a global by extension code)")
            elif name in _STRINGS:
                top.append(str(arg))
            elif name in _PUTS:
                memo[len(memo) if name == "MEMOIZE" else int(arg)] = top[-1] if top else None
            elif name in _GETS:
                top.append(memo.get(int(arg)))
            elif name not in _QUIET:
                top.append(None)
            del top[:-2]
    except Refused:
        raise
    except Exception as err:  # truncated or not a pickle: nothing torch could load safely
        raise Refused(f"not a readable pickle ({err})") from None


def _resolved(module: str, name: str, protocol: int) -> str:
    """The global the unpickler looks up: below protocol 3 it maps Python 2 names
    (`__builtin__.exec` is `builtins.exec`), as pickle's fix_imports does."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def torch_file_globals(path: Path) -> list[str]:
    """Globals of everything `torch.load(path, weights_only=False)` would unpickle."""
    if zipfile.is_zipfile(path):
        # The zip format: the object is in <archive>/data.pkl (tensor bytes are raw files).
        with zipfile.ZipFile(path) as zf:
            found = []
            for info in zf.infolist():  # every entry, duplicated names included
                if info.filename.endswith(".pkl"):
                    with zf.open(info) as fh:
                        found.extend(pickle_globals(fh.read()))
            return found
    if tarfile.is_tarfile(path):
        raise Refused("a tar archive (torch's oldest format), which DeepSpeed never writes")
    # torch's legacy format: magic number, protocol, sys info, the object, storage keys --
    # five pickles read with the full unpickler -- then raw storage bytes.
    with path.open("rb") as fh:
        return pickle_globals(fh, count=5)


def allowed_deepspeed_global(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    # Exact pairs only: a module prefix would admit 'deepspeed.x' 'os.system' (pickle resolves
    # dotted names attribute by attribute).
    return (module, attr) in DEEPSPEED_GLOBALS


def deepspeed_refusal(directory: Path) -> Optional[str]:
    """Why a ZeRO checkpoint's deepspeed/ may not be handed to DeepSpeed, or None."""
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if _not_a_pickle(path):
            continue
        try:
            names = torch_file_globals(path)
        except Refused as err:
            return f"{path} is refused: {err}"
        for name in names:
            if not allowed_deepspeed_global(name):
                return (f"{path} names the global {name}, which DeepSpeed never writes into a "
                        "checkpoint; refusing to load it (it could run code)")
    return None


class _Stub:
    """Stands in for a class the DCP metadata names, so its structure can be read safely."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Classes of DCP's metadata pickle: read here as stubs (no torch code runs); the engine's
# loader (checkpoint/sharded.py) lets DCP unpickle only these, after this scan passed.
_DCP_META = "torch.distributed.checkpoint.metadata"
DCP_CLASSES = {(_DCP_META, n) for n in (
    "Metadata", "TensorStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING",
    "ChunkStorageMetadata", "MetadataIndex", "StorageMeta", "BytesStorageMetadata")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
    ("pathlib._local", "PosixPath")}


class _StructureUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return super().find_class(module, name)
        if (module, name) in DCP_CLASSES or module == "torch":  # torch.<dtype> is a name
            return type(name, (_Stub,), {})
        raise pickle.UnpicklingError(f"names {module}.{name}, which DCP metadata never holds")


def _entries(meta: Any) -> dict:
    state = getattr(meta, "state", None)
    if isinstance(state, tuple):  # (dict, slots)
        state = {k: v for part in state if isinstance(part, dict) for k, v in part.items()}
    entries = (state or {}).get("state_dict_metadata")
    if not isinstance(entries, dict):
        raise pickle.UnpicklingError("holds no state_dict_metadata")
    return entries


def dcp_refusal(directory: Path) -> Optional[str]:
    """Why a DCP checkpoint's dcp/ may not be loaded, or None: every entry must be a tensor."""
    path = directory / ".metadata"
    if not path.is_file():
        return None  # a missing file is the manifest's business
    try:
        with path.open("rb") as fh:
            entries = _entries(_StructureUnpickler(fh).load())
    except Exception as err:
        return f"{path} is refused: it {err}" if isinstance(err, pickle.UnpicklingError) \
            else f"{path} is refused: not readable DCP metadata ({err})"
    for key, item in entries.items():
        kind = type(item).__name__
        if kind != "TensorStorageMetadata":
            return (f"{path}: entry '{key}' is {kind}, not a tensor; refusing to load it "
                    "(DCP would unpickle it, which can run code)")
    return None


def refusal(checkpoint: Path) -> Optional[str]:
    """None when nothing in `checkpoint` can make loading it run code; else why, in a line."""
    if (checkpoint / "deepspeed").is_dir():
        found = deepspeed_refusal(checkpoint / "deepspeed")
        if found:
            return found
    if (checkpoint / "dcp").is_dir():
        return dcp_refusal(checkpoint / "dcp")
    return None
