"""The fault suite: preemption, a rank killed mid-save, damaged files, another world size.

Every run here is the tiny recipe on 2 gloo ranks in fp32 with 2 DataLoader workers; a run
that is stopped and resumed must end with the very weights, and log the very losses, of one
that never stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import REPO, TINY, cli_env, decoded_per_epoch, launcher
from manifest_check import assert_manifest_is_what_each_rank_wrote
from launcher.checkpoint import store
from launcher.run_dir import RunDir

# 70 steps: past the end of the first epoch (62 steps of 64 examples) into the second. Evals
# at 25, 50 and 70 interleave with training as in a real run; no test here reads their scores,
# so they score a 64-example sample, not the split's 1,001 rows.
ARGS = ["--nproc-per-node", "2", "run.max_steps=70", "run.epochs=None", "checkpoint.every=10",
        "checkpoint.keep_last=2", "eval.every=25", "eval.max_examples=64", "run.log_every=1",
        "data.num_workers=2"]


def run(out: Path, *extra: str, fault: str | None = None, command: str = "run"):
    args = ([command, out, *extra] if command == "resume" else
            ["run", TINY, *ARGS, f"run.output_dir={out}", *extra])
    return launcher(*args, fault=fault)


def steps_logged(rd: RunDir) -> list[tuple]:
    return [(r["step"], r["epoch"], r["loss"], r["lr"])
            for r in map(json.loads, rd.metrics.read_text().splitlines())]


def weights(rd: RunDir) -> dict:
    return load_file(str(rd.final / "model.safetensors"))


def assert_same_run(rd: RunDir, ref: RunDir) -> None:
    assert steps_logged(rd) == steps_logged(ref)
    a, b = weights(rd), weights(ref)
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunDir:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return RunDir(out)


def stopped(tmp_path_factory, name: str, *extra: str, fault: str) -> Path:
    """A run stopped by `fault` (exit 75), made once per module; tests resume copies of it."""
    out = tmp_path_factory.mktemp(name) / "run"
    proc = run(out, *extra, fault=fault)
    assert proc.returncode == 75, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def copy_of(stopped_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    return out


# A signal on one rank is agreed one step later, when every rank saves: these land the save
# just before a periodic checkpoint (9), right after one (11) and on the epoch's last step (62);
# ELSEWHERE stops somewhere else.
STOPS = [8, 10, 61]
# Somewhere else: drawn once, from a fixed seed, so the test ids are the same at every collection.
ELSEWHERE = random.Random(18).randint(2, 68)


def _assert_preempted(out: Path, first, signal_step: int) -> None:
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-3000:]
    rd = RunDir(out)
    saved = signal_step + 1
    assert json.loads((out / "preempted.json").read_text())["step"] == saved
    assert rd.latest() == rd.checkpoint(saved)
    assert "launcher resume" in first.stdout


def _assert_continued(out: Path, second, signal_step: int, reference) -> None:
    rd = RunDir(out)
    saved = signal_step + 1
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"from step {saved}" in second.stdout
    assert json.loads(rd.summary.read_text())["resumed_from"] == saved
    assert_same_run(rd, reference)


CHAIN = sorted({*STOPS, ELSEWHERE})


@pytest.mark.parametrize("signal_steps", [CHAIN],
                         ids=["signal-at-" + "-".join(map(str, CHAIN))])
def test_preempted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, reference,
                                                                 signal_steps):
    """One run preempted at every stop in turn, each launch resuming where the last one saved
    and stopping at the next (one launch per stop, not a fresh 70-step run per stop): the last
    launch ends with the weights and the losses of the run that never stopped. The stop at
    ELSEWHERE is continued by `launcher run` into the preempted directory, which goes on like
    `launcher resume`; every other one by `launcher resume`."""
    out = tmp_path / "run"
    launch = run(out, fault=f"at=step,step={signal_steps[0]},rank=1,do=TERM")
    _assert_preempted(out, launch, signal_steps[0])
    for before, signal_step in zip(signal_steps, signal_steps[1:]):
        command = "run" if before == ELSEWHERE else "resume"
        launch = run(out, command=command, fault=f"at=step,step={signal_step},rank=1,do=TERM")
        assert f"from step {before + 1}" in launch.stdout, launch.stdout[-2000:]
        _assert_preempted(out, launch, signal_step)
    last = run(out, command="run" if signal_steps[-1] == ELSEWHERE else "resume")
    _assert_continued(out, last, signal_steps[-1], reference)


def test_sigterm_to_the_launcher_checkpoints_every_rank_and_resumes(tmp_path, reference):
    """The signal a scheduler or a person sends: to `launcher run`, through torchrun, to all."""
    out = tmp_path / "run"
    rd = RunDir(out)
    env = cli_env()
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run", str(TINY), *ARGS,
                             f"run.output_dir={out}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (rd.metrics.is_file() and rd.metrics.read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stdout[-2000:] + stderr[-3000:]
    step = json.loads((out / "preempted.json").read_text())["step"]
    assert 1 <= step < 70 and rd.latest() == rd.checkpoint(step)
    second = run(out, command="resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same_run(rd, reference)


def test_rank_killed_while_saving_then_a_second_signal_during_a_save_change_nothing(tmp_path,
                                                                                   reference):
    """A rank killed in the save of step 20 leaves step 10 in charge; the resume from it is
    then preempted at 31 with a second signal on each rank during that save, which changes
    nothing; the resume from 31 ends as the run that never stopped. (Two tests before, each
    with its own 70 steps; one chain of launches now.)"""
    out = tmp_path / "run"
    rd = RunDir(out)
    first = run(out, fault="at=save,step=20,rank=1,do=kill")
    assert first.returncode != 0
    assert "rank 1 of 2 failed" in first.stderr
    assert rd.latest() == rd.checkpoint(10)
    assert (rd.checkpoints / "step-0000020.tmp").is_dir()  # what the killed save left
    assert not rd.checkpoint(20).exists()
    assert store.problem(rd.latest()) is None
    second = run(out, command="resume",
                 fault="at=step,step=30,rank=1,do=TERM;at=save,step=31,rank=0,do=TERM;"
                       "at=save,step=31,rank=1,do=USR1")
    assert "from step 10" in second.stdout
    assert second.returncode == 75, second.stderr[-3000:]
    assert rd.latest() == rd.checkpoint(31) and store.problem(rd.latest()) is None
    third = run(out, command="resume")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "from step 31" in third.stdout
    assert json.loads(rd.summary.read_text())["resumed_from"] == 31
    assert_same_run(rd, reference)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def stopped_at_24(tmp_path_factory) -> Path:
    return stopped(tmp_path_factory, "stopped-at-24", fault="at=step,step=23,rank=0,do=TERM")


@pytest.mark.parametrize("damage", [_truncate, _flip_byte], ids=["truncated", "byte-flipped"])
def test_damaged_shard_is_caught_by_the_manifest_and_the_run_falls_back(tmp_path, reference,
                                                                         stopped_at_24, damage):
    out = copy_of(stopped_at_24, tmp_path)
    rd = RunDir(out)
    assert rd.latest() == rd.checkpoint(24)
    shard = rd.checkpoint(24) / "dcp" / "__1_0.distcp"
    damage(shard)
    second = run(out, command="resume")
    assert second.returncode == 0, second.stderr[-3000:]
    said = " ".join((second.stdout + second.stderr).split())
    assert "step-0000024 is damaged" in said and "__1_0.distcp" in said
    assert "from step-0000020" in said
    assert_same_run(rd, reference)


def _ledger(rd: RunDir, step: int | None = None) -> list[str]:
    ids = []
    for trace in sorted(rd.trace.glob("rank*.txt")):
        ids += [i for s, i in (line.split("\t") for line in trace.read_text().splitlines())
                if step is None or int(s) == step]
    return ids


# global batch 96 = 2 x 16 x 3 = 3 x 16 x 2 = 1 x 16 x 6; one epoch of 41 steps
ONE_EPOCH_OF_96 = ["run.max_steps=None", "run.epochs=1", "scale.micro_batch=16",
                   "scale.global_batch=96", "run.trace_examples=true"]


@pytest.fixture(scope="module")
def epoch_stopped_at_17(tmp_path_factory) -> Path:
    return stopped(tmp_path_factory, "epoch-stopped-at-17", *ONE_EPOCH_OF_96,
                   fault="at=step,step=16,rank=1,do=USR1")


@pytest.mark.parametrize("world", [1, 3])
def test_resume_on_another_world_size_trains_every_example_once(tmp_path, epoch_stopped_at_17,
                                                                 world):
    """2 ranks, preempted, then 1 or 3: the epoch's examples (shuffled) are each trained
    exactly once, and each rank decodes only its own rows."""
    out = copy_of(epoch_stopped_at_17, tmp_path)
    rd = RunDir(out)
    second = run(out, "--nproc-per-node", str(world), command="resume")
    assert second.returncode == 0, second.stderr[-3000:]
    plan = json.loads((rd.plan / "plan.json").read_text())
    assert (plan["world_size"], plan["grad_accum"], plan["global_batch"]) == (world, 6 // world, 96)
    ids = _ledger(rd)
    assert len(ids) == 41 * 96 and len(set(ids)) == len(ids)
    step_one = sorted(_ledger(rd, step=1))
    assert step_one != sorted(f"tn-{k:05d}" for k in range(96)), "the epoch is in file order"
    # Resumed after step 17 (17 x 96 examples): 2,304 examples left, rows / world per rank.
    left = (41 - 17) * 96 // world
    assert decoded_per_epoch(rd) == [(r, 0, left, left) for r in range(world)]
    summary = json.loads(rd.summary.read_text())
    assert summary["steps"] == 41 and summary["world_size"] == world
    assert [r[0] for r in steps_logged(rd)] == list(range(1, 42))
    # The last checkpoint was written by `world` ranks: the manifest holds what each wrote.
    assert_manifest_is_what_each_rank_wrote(rd.latest(), world=world, strategy="ddp")


def test_resume_refuses_a_world_size_that_cannot_keep_the_global_batch(tmp_path, stopped_at_24,
                                                                       cli):
    out = copy_of(stopped_at_24, tmp_path)
    before = sorted(p.name for p in RunDir(out).checkpoints.iterdir())
    proc = cli("resume", out, "--nproc-per-node", "3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--nproc-per-node" in proc.stderr and "among [1, 2]" in proc.stderr
    assert sorted(p.name for p in RunDir(out).checkpoints.iterdir()) == before


def test_checkpoint_of_another_recipe_is_refused_saying_what_differs(tmp_path, stopped_at_24, cli):
    out = copy_of(stopped_at_24, tmp_path)
    before = sorted(p.name for p in RunDir(out).checkpoints.iterdir())
    proc = cli("run", TINY, f"run.output_dir={out}",
               "task.labels=['World','Sports','Business','Science']")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "task.labels was ['World', 'Sports', 'Business', 'Sci/Tech']" in proc.stderr
    proc = cli("run", TINY, f"run.output_dir={out}", "model.head_hidden=16")
    assert proc.returncode == 2 and "model.head_hidden was None" in proc.stderr
    proc = cli("run", TINY, f"run.output_dir={out}", "scale.global_batch=128")
    assert proc.returncode == 2 and "scale.global_batch=64" in proc.stderr
    # the saved position counts examples of a shuffled order: not of another order
    proc = cli("run", TINY, f"run.output_dir={out}", "data.shuffle=false")
    assert proc.returncode == 2 and "data.shuffle was True" in proc.stderr
    proc = cli("run", TINY, f"run.output_dir={out}", "run.seed=7")
    assert proc.returncode == 2 and "run.seed was 42" in proc.stderr
    assert sorted(p.name for p in RunDir(out).checkpoints.iterdir()) == before
    # ... and as a user meets it, from a real process: exit 2, no traceback.
    proc = launcher("run", TINY, f"run.output_dir={out}", "run.seed=7")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "run.seed was 42" in proc.stderr


def test_checkpoint_holds_nothing_that_loads_through_pickle(reference, tmp_path):
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from launcher.checkpoint.sharded import _MetadataUnpickler, _SafeReader

    ckpt = reference.latest()
    assert store.problem(ckpt) is None
    assert_manifest_is_what_each_rank_wrote(ckpt, world=2, strategy="ddp")
    kinds = {p.suffix or p.name for p in ckpt.rglob("*") if p.is_file()}
    assert kinds <= {".metadata", ".distcp", ".json", ".safetensors"}, kinds
    # DCP would torch.load(weights_only=False) a bytes entry: there must be none.
    meta = _SafeReader(str(ckpt / "dcp")).read_metadata()
    assert not [k for k, v in meta.state_dict_metadata.items()
                if isinstance(v, BytesStorageMetadata)]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import io
    import pickle
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _MetadataUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_log_window_cut_by_a_preemption_is_whole_after_resume(tmp_path, reference):
    """Logging every 4 steps, stopped after step 14: the line for step 16 still averages
    steps 13 to 16, as the uninterrupted run's per-step losses say it should."""
    out = tmp_path / "run"
    assert run(out, "run.log_every=4", fault="at=step,step=13,rank=1,do=TERM").returncode == 75
    assert run(out, command="resume").returncode == 0
    per_step = {s: loss for s, _, loss, _ in steps_logged(reference)}
    logged = {s: loss for s, _, loss, _ in steps_logged(RunDir(out))}
    assert sorted(logged) == [*range(4, 70, 4), 70]
    for step, loss in logged.items():
        first = step - 3 if step % 4 == 0 else step - step % 4 + 1
        window = [per_step[s] for s in range(first, step + 1)]
        assert loss == pytest.approx(sum(window) / len(window), rel=1e-9), step
