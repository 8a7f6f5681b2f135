"""A checkpoint is a file anyone with write access to the run directory could have replaced (and
re-signed: the manifest proves a file whole, not who wrote it). Loading one must not run code:
crafted DCP and ZeRO checkpoints are refused, named, and the run falls back to an older one; the
payload's marker file is never created.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import pickle
import pickletools
from pathlib import Path

import pytest
import torch

from conftest import TINY
from together import Early, finish, start
from launcher.checkpoint import store, trust
from launcher.run_dir import RunDir

MARKER_ENV = "LAUNCHER_TEST_PAYLOAD_MARKER"


class Payload:
    """Unpickling this runs `exec`: it writes the file named by MARKER_ENV (or `default`)."""

    def __init__(self, default: Path):
        self.code = (f"import os; open(os.environ.get({MARKER_ENV!r}, {str(default)!r}), 'w')"
                     ".write('payload ran')")

    def __reduce__(self):
        return builtins.exec, (self.code,)


def resign(ckpt: Path) -> None:
    """What anyone who can write the directory can do: a manifest matching the new files."""
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != store.MANIFEST)
    entries = store.describe(files, ckpt)
    store.write_manifest(ckpt, store.step_of(ckpt), entries)
    assert store.problem(ckpt) is None


# ---- the scanner, on files torch.save writes ------------------------------------------------

def _state() -> dict:
    return {"optimizer_state_dict": {"state": {0: {"exp_avg": torch.zeros(3)}}},
            "param_shapes": [torch.Size([3])], "ds_version": "0.19.8"}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_scanner_passes_tensors_and_names_an_injected_global(tmp_path, zipped):
    clean, bad = tmp_path / "clean.pt", tmp_path / "bad.pt"
    torch.save(_state(), clean, _use_new_zipfile_serialization=zipped)
    assert set(trust.torch_file_globals(clean)) <= {
        "torch._utils._rebuild_tensor_v2", "torch.FloatStorage", "collections.OrderedDict",
        "torch.Size"}
    torch.save({**_state(), "x": Payload(tmp_path / "marker")}, bad,
               _use_new_zipfile_serialization=zipped)
    assert "builtins.exec" in trust.torch_file_globals(bad)
    directory = tmp_path / "deepspeed"
    directory.mkdir()
    clean.rename(directory / "clean.pt")
    assert trust.deepspeed_refusal(directory) is None
    bad.rename(directory / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    why = trust.deepspeed_refusal(directory)
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt names the global builtins.exec" in why
    assert not (tmp_path / "marker").exists()


def test_scanner_sees_through_memo_tricks_and_refuses_what_it_cannot_name():
    # module and name memoized, popped, fetched back: STACK_GLOBAL still resolves them.
    hidden = (b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94" b"00" b"h\x00h\x01\x93"
              b"\x8c\x01x\x85R.")
    pickletools.dis(hidden, out=io.StringIO())  # a valid pickle
    assert trust.pickle_globals(hidden) == ["builtins.exec"]
    # the name comes out of a computation the scanner cannot follow: refused, not guessed.
    computed = b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x8c\x01x\x86" b"0" b"\x93."
    with pytest.raises(trust.Refused, match="STACK_GLOBAL"):
        trust.pickle_globals(computed)
    with pytest.raises(trust.Refused, match="EXT1"):
        trust.pickle_globals(b"\x80\x02\x82\x01.")
    # a dotted name through an allowed module is not the allowed global
    assert not trust.allowed_deepspeed_global("collections.OrderedDict.os")
    assert trust.allowed_deepspeed_global("collections.OrderedDict")
    # protocol 0 (text) pickles are pickles too
    assert trust.pickle_globals(pickle.dumps(Payload(Path("m")), protocol=0)) == \
        ["builtins.exec"]


# ---- DCP: a model entry replaced by pickled bytes, on resume and on eval --------------------

def craft_dcp(ckpt: Path, key: str, payload: Payload) -> None:
    """Replace tensor entry `key` of ckpt/dcp by a bytes entry holding a pickled payload, the
    way torch's DCP writes bytes (the metadata file is our own, so plain pickle reads it)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    meta_path = ckpt / "dcp" / ".metadata"
    meta = pickle.loads(meta_path.read_bytes())
    assert key in meta.state_dict_metadata
    shard = ckpt / "dcp" / "__0_0.distcp"
    data = pickle.dumps(payload)
    offset = shard.stat().st_size
    with shard.open("ab") as fh:
        fh.write(data)
    meta.state_dict_metadata[key] = BytesStorageMetadata()
    meta.storage_data = {i: s for i, s in meta.storage_data.items() if i.fqn != key}
    meta.storage_data[MetadataIndex(key)] = _StorageInfo("__0_0.distcp", offset, len(data))
    meta_path.write_bytes(pickle.dumps(meta))
    resign(ckpt)


def _launch(root: Path) -> dict:
    out = root / "run"
    return {"out": out, "proc": start(
        ["run", TINY, "run.max_steps=4", "run.epochs=None", "eval.every=0",
         "eval.max_examples=32", "checkpoint.every=2", "checkpoint.keep_last=3",
         f"run.output_dir={out}"], fault="at=step,step=3,rank=0,do=TERM", background=True)}


EARLY = Early("ddp", _launch, reads=("preempted_ddp",))  # with the session: read last


@pytest.fixture(scope="module")
def preempted_ddp(tmp_path_factory) -> RunDir:
    """A 1-process tiny run stopped by SIGTERM after step 3: checkpoints step 2 and step 3."""
    started = EARLY.start(tmp_path_factory)
    proc = finish(started["proc"])
    assert proc.returncode == 75, proc.stdout[-2000:] + proc.stderr[-3000:]
    rd = RunDir(started["out"])
    assert [p.name for p in store.complete(rd)] == ["step-0000002", "step-0000003"]
    return rd


def test_crafted_dcp_checkpoint_is_refused_before_launch_and_by_eval(preempted_ddp, tmp_path,
                                                                    monkeypatch):
    """The engine's side (a resume passes over a crafted checkpoint and goes on from the one
    before, the payload never running) is shown by a real 2-rank resume in tests/test_resume.py
    (test_damaged_and_crafted_checkpoints_are_passed_over_and_the_run_falls_back), with
    `craft_dcp` and `Payload` from here."""
    rd = preempted_ddp
    marker = tmp_path / "dcp-payload-ran"
    key = "model.classifier.bias"
    craft_dcp(rd.checkpoint(3), key, Payload(marker))

    # The threat is real: torch's own DCP reader runs the payload (here into a marker of its own).
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    probe = tmp_path / "probe-marker"
    monkeypatch.setenv(MARKER_ENV, str(probe))
    with pytest.raises(BaseException):  # DCP's CheckpointException, after the payload ran
        dcp.load({"model": {"classifier.bias": torch.zeros(4)}},
                 storage_reader=FileSystemReader(str(rd.checkpoint(3) / "dcp")), no_dist=True)
    assert probe.exists()
    monkeypatch.delenv(MARKER_ENV)

    # Our readers name checkpoint and key, before launch and in the engine, and fall back.
    why = trust.refusal(rd.checkpoint(3))
    assert f"entry '{key}' is BytesStorageMetadata, not a tensor" in why
    assert str(rd.checkpoint(3)) in why
    assert store.choose(rd).path == rd.checkpoint(2)
    assert store.loadable(rd).path == rd.checkpoint(2)
    out, err = io.StringIO(), io.StringIO()
    from launcher.cli import main

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["resume", str(rd.root), "--dry-run"]) == 0
    assert "checkpoint step-0000003 is refused" in err.getvalue()
    assert "from step 2 " in out.getvalue()
    assert not marker.exists()

    # eval/predict refuse it too, in one line; step-N and step-000000N name the same checkpoint.
    from launcher.commands.trained import pick_checkpoint

    assert pick_checkpoint(rd, "step-2") == pick_checkpoint(rd, "step-0000002") == "step-0000002"
    for name in ("step-3", "step-0000003"):
        assert main(["eval", str(rd.root), "--checkpoint", name]) == 2
    assert not marker.exists()


# ---- ZeRO: a payload global injected into DeepSpeed's optimizer shard -----------------------

def craft_zero(ckpt: Path, payload: Payload) -> None:
    shard = ckpt / "deepspeed" / "state" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    state = torch.load(shard, weights_only=False)  # our own file, written by this test's run
    state["payload"] = payload
    torch.save(state, shard)
    resign(ckpt)


def assert_crafted_zero_is_refused(rd: RunDir, tmp_path: Path) -> None:
    """Called by tests/test_strategies.py on its preempted 2-rank zero2 run (checkpoints 10
    and 13), so that no ZeRO run is launched for this alone: a copy gets a payload in its
    newest checkpoint, then in both."""
    import shutil

    from launcher.cli import main

    copy = RunDir(tmp_path / "crafted")
    shutil.copytree(rd.root, copy.root)
    marker = tmp_path / "zero-payload-ran"
    newest, older = store.complete(copy)[-1], store.complete(copy)[-2]
    craft_zero(newest, Payload(marker))
    why = trust.refusal(newest)
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt names the global builtins.exec" in why
    # the engine's choice (rank 0 hashes and scans) and the pre-launch check both fall back
    assert store.choose(copy).path == older
    assert store.loadable(copy).path == older
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["resume", str(copy.root), "--dry-run"]) == 0
    assert f"checkpoint {newest.name} is refused" in err.getvalue()
    assert f"from step {store.step_of(older)} " in out.getvalue()
    craft_zero(older, Payload(marker))
    assert store.choose(copy).path is None and len(store.choose(copy).warnings) == 2
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["resume", str(copy.root), "--dry-run"]) == 2
    assert "no checkpoint in" in err.getvalue() and "is safe to load" in err.getvalue()
    assert not marker.exists()
