"""The fault suite: preemption, a rank killed mid-save, damaged and crafted checkpoints, a
`launcher cancel`, another world size.

Every run here is the tiny recipe on 2 gloo ranks in fp32 with 2 DataLoader workers, on the
first 1,000 rows of its training file (15 steps an epoch); a run that is stopped and resumed
must end with the very weights, and log the very losses, of one that never stopped.

The launches are few and made once, by the module's `runs` fixture, those that share nothing
at the same time; each test below checks one behaviour on what they left:
- `chain`: one run stopped four times, each launch going on from where the last one left it
  (a signal before a periodic checkpoint with a second signal on each rank during its save; a
  signal right after one, continued by `launcher run`; a rank killed in a save; a resume past a
  damaged and a crafted checkpoint, stopped on the epoch's last step), then finished; logging
  every 3 steps, so most stops cut a log window.
- `reference`: the same run, uninterrupted, logging every step.
- `epoch`: one epoch of global batch 96, stopped by `launcher cancel`, then resumed on 1 and
  on 3 ranks (copies, at once).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import REPO, TINY, decoded_per_epoch, in_process, launcher
from manifest_check import assert_manifest_is_what_each_rank_wrote
from test_untrusted_checkpoints import Payload, craft_dcp
from together import finish, start
from launcher import cli as cli_mod
from launcher.checkpoint import store
from launcher.run_dir import RunDir

# 20 steps: past the end of the first epoch (15 steps of 64 examples; 40 rows left over) into
# the second. Evals at 10 and 20 interleave with training as in a real run (on checkpoint
# steps: an eval that improves saves a checkpoint of its own); no test here reads their
# scores, so they score a 64-example sample, not the split's 1,001 rows.
ARGS = ["--nproc-per-node", "2", "run.max_steps=20", "run.epochs=None", "checkpoint.every=5",
        "checkpoint.keep_last=3", "eval.every=10", "eval.max_examples=64", "run.log_every=1",
        "data.num_workers=2"]
STEPS, EPOCH = 20, 15
LOG_EVERY = 3  # the chain's: a stop at 4 or 15 (and the fallback to 4) cuts a window, 6 not
# The chain's faults, launch by launch. A signal on one rank is agreed one step later, when
# every rank saves: at 3 the save of 4 comes just before the periodic checkpoint of 5 (and
# both ranks get a second signal during it); at 5 the save of 6 right after it; at 14 the
# save of 15 is the epoch's last step.
BEFORE = ("at=step,step=3,rank=1,do=TERM;at=save,step=4,rank=0,do=TERM;"
          "at=save,step=4,rank=1,do=USR1")
AFTER = "at=step,step=5,rank=1,do=TERM"
KILLED = "at=save,step=10,rank=1,do=kill"
EPOCH_END = "at=step,step=14,rank=1,do=TERM"
PAYLOAD_KEY = "model.classifier.bias"

# global batch 96 = 2 x 16 x 3 = 3 x 16 x 2 = 1 x 16 x 6; one epoch of 20 steps (1,950 rows)
EPOCH_ROWS, EPOCH_STEPS = 1950, 20
ONE_EPOCH_OF_96 = ["run.max_steps=None", "run.epochs=1", "scale.micro_batch=16",
                   "scale.global_batch=96", "run.trace_examples=true"]


def _rows(path: Path, n: int) -> Path:
    lines = (REPO / "data/tiny_news/train.jsonl").read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:n]))
    return path


def _run_args(out: Path, train: Path, *extra: str) -> list:
    return ["run", TINY, *ARGS, f"data.train={train}", f"run.output_dir={out}", *extra]


_STARTED: list[subprocess.Popen] = []


def _start(args: list, fault: str | None = None) -> subprocess.Popen:
    # One thread a process: several launches share 2 cores (torchrun sets it for 2 ranks).
    proc = start(args, fault, OMP_NUM_THREADS="1")
    _STARTED.append(proc)
    return proc


def _launch(args: list, fault: str | None = None) -> subprocess.CompletedProcess:
    return finish(_start(args, fault))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    try:
        return _runs(tmp_path_factory.mktemp("resume"))
    finally:  # a launch left running by a failed assertion: SIGTERM (it saves and exits)
        for proc in _STARTED:
            if proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=120)


def _runs(root: Path) -> dict:
    train = _rows(root / "train.jsonl", 1000)
    epoch_train = _rows(root / "train96.jsonl", EPOCH_ROWS)
    ref, chain, epoch = RunDir(root / "reference"), RunDir(root / "chain"), RunDir(root / "epoch")
    chain_args = _run_args(chain.root, train, f"run.log_every={LOG_EVERY}")
    got: dict = {"reference": ref, "chain": chain, "epoch": epoch, "marker": root / "payload-ran",
                 "recipe": [TINY, *ARGS, f"data.train={train}", f"run.log_every={LOG_EVERY}"]}

    def left_by(name: str) -> None:  # where the chain's launch `name` left it
        saved = json.loads(chain.preempted.read_text())["step"] if chain.preempted.is_file() \
            else None
        got[name + "_left"] = (saved, chain.latest())
        got[name + "_files"] = sorted(p.name for p in chain.checkpoints.iterdir())

    # 1: the reference, the chain's first stop, and the epoch run, which `launcher cancel`
    # stops once it has logged a step.
    procs = [_start(_run_args(ref.root, train)), _start(chain_args, BEFORE),
             _start(_run_args(epoch.root, epoch_train, *ONE_EPOCH_OF_96))]
    deadline = time.monotonic() + 300
    while not (epoch.metrics.is_file() and epoch.metrics.read_text().strip()):
        assert procs[2].poll() is None, finish(procs[2]).stderr[-3000:]
        assert time.monotonic() < deadline, "no step logged"
        time.sleep(0.05)
    got["cancel"] = in_process("cancel", epoch.root)
    got["reference_run"], got["before"], got["cancelled"] = map(finish, procs)
    left_by("before")
    assert got["reference_run"].returncode == 0, got["reference_run"].stderr[-3000:]
    # What the refusals below start from: the chain as its first stop left it.
    got["stopped"] = root / "stopped"
    shutil.copytree(chain.root, got["stopped"])

    # 2: the chain goes on by `launcher run`; the epoch run resumes on 1 and on 3 ranks.
    got["worlds"] = {w: RunDir(root / f"epoch-on-{w}") for w in (1, 3)}
    for rd in got["worlds"].values():
        shutil.copytree(epoch.root, rd.root)
    procs = [_start(chain_args, AFTER),
             *(_start(["resume", rd.root, "--nproc-per-node", w])
               for w, rd in got["worlds"].items())]
    got["after"], *resumed = map(finish, procs)
    left_by("after")
    got["world_runs"] = dict(zip(got["worlds"], resumed))

    # 3-5: the chain alone.
    got["killed"] = _launch(["resume", chain.root], KILLED)
    left_by("killed")
    got["killed_problem"] = store.problem(chain.latest())
    got["damaged"] = chain.checkpoint(6)
    got["crafted"] = chain.checkpoint(5)
    if got["damaged"].is_dir() and got["crafted"].is_dir():
        _truncate(got["damaged"] / "dcp" / "__1_0.distcp")
        craft_dcp(got["crafted"], PAYLOAD_KEY, Payload(got["marker"]))
    got["past_damage"] = _launch(["resume", chain.root], EPOCH_END)
    left_by("past_damage")
    got["last"] = _launch(["resume", chain.root])
    return got


def steps_logged(rd: RunDir) -> list[tuple]:
    return [(r["step"], r["epoch"], r["loss"], r["lr"])
            for r in map(json.loads, rd.metrics.read_text().splitlines())]


def weights(rd: RunDir) -> dict:
    return load_file(str(rd.final / "model.safetensors"))


def assert_same_weights(rd: RunDir, ref: RunDir) -> None:
    a, b = weights(rd), weights(ref)
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"


def _said(proc) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


def test_reference_runs_uninterrupted(runs):
    rd = runs["reference"]
    assert [s for s, *_ in steps_logged(rd)] == list(range(1, STEPS + 1))
    assert json.loads(rd.summary.read_text())["resumed_from"] is None


def test_signal_before_a_periodic_checkpoint_with_a_second_one_during_the_save(runs):
    """Rank 1 signalled after step 3: every rank saves step 4 and exits 75; a second signal
    on each rank (TERM on 0, USR1 on 1) during that save changes nothing."""
    first = runs["before"]
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-3000:]
    assert "launcher resume" in first.stdout
    stopped = RunDir(runs["stopped"])
    assert runs["before_left"] == (4, runs["chain"].checkpoint(4))
    assert stopped.latest() == stopped.checkpoint(4) and store.problem(stopped.latest()) is None


def test_launcher_run_goes_on_from_a_preempted_directory_and_stops_right_after_a_checkpoint(
        runs):
    """`launcher run` with the same recipe into the preempted directory goes on like
    `launcher resume`; a signal after step 5 saves 6, right after the periodic checkpoint."""
    after = runs["after"]
    assert "from step 4" in after.stdout, after.stdout[-2000:]
    assert after.returncode == 75, after.stdout[-2000:] + after.stderr[-3000:]
    assert "launcher resume" in after.stdout
    assert runs["after_left"] == (6, runs["chain"].checkpoint(6))


def test_rank_killed_while_saving_leaves_the_checkpoint_before_in_charge(runs):
    killed, rd = runs["killed"], runs["chain"]
    assert "from step 6" in killed.stdout, killed.stdout[-2000:]
    assert killed.returncode not in (0, 75)
    assert "rank 1 of 2 failed" in killed.stderr
    assert runs["killed_left"][1] == rd.checkpoint(6)
    files = runs["killed_files"]
    assert "step-0000010.tmp" in files  # what the killed save left
    assert "step-0000010" not in files
    assert runs["killed_problem"] is None  # step 6 whole, as saved (damaged later on purpose)


def test_damaged_and_crafted_checkpoints_are_passed_over_and_the_run_falls_back(runs):
    """Step 6's shard truncated (the manifest catches it) and step 5 crafted to run code when
    loaded (a bytes entry: refused, its payload never runs): the resume goes on from 4, and
    stops again on the epoch's last step."""
    proc = runs["past_damage"]
    assert proc.returncode == 75, proc.stdout[-2000:] + proc.stderr[-3000:]
    said = _said(proc)
    assert "step-0000006 is damaged" in said and "__1_0.distcp" in said
    assert "checkpoint step-0000005 is refused" in said and PAYLOAD_KEY in said
    assert "from step-0000004" in said
    assert runs["past_damage_left"] == (EPOCH, runs["chain"].checkpoint(EPOCH))
    assert not runs["marker"].exists()


def test_byte_flipped_shard_is_caught_by_the_manifest_too(runs, tmp_path):
    """A shard of the same size with one byte changed: the manifest's hash catches it, and
    the choice (what the engine resumes from) falls back; truncation is resumed past above."""
    copy = RunDir(tmp_path / "run")
    shutil.copytree(runs["stopped"], copy.root)
    assert store.choose(copy).path == copy.checkpoint(4)
    _flip_byte(copy.checkpoint(4) / "dcp" / "__1_0.distcp")
    choice = store.choose(copy)
    assert choice.path is None  # the stop at 4 left no older checkpoint
    assert any("step-0000004 is damaged" in w and "__1_0.distcp" in w for w in choice.warnings)


def test_preempted_at_every_stop_the_resumed_run_matches_an_uninterrupted_one(runs):
    """After the stops at 4, 6, a kill in the save of 10, a fallback to 4 and a stop at 15
    (the epoch's last step), the last launch ends with the weights of the run that never
    stopped; every line it logged (every 3 steps) is the mean of the uninterrupted run's
    losses over that window, even where a stop cut the window."""
    rd, ref, last = runs["chain"], runs["reference"], runs["last"]
    assert last.returncode == 0, last.stderr[-3000:]
    assert f"from step {EPOCH}" in last.stdout
    assert json.loads(rd.summary.read_text())["resumed_from"] == EPOCH
    assert_same_weights(rd, ref)
    per_step = {s: (epoch, loss, lr) for s, epoch, loss, lr in steps_logged(ref)}
    logged = {s: (epoch, loss, lr) for s, epoch, loss, lr in steps_logged(rd)}
    assert sorted(logged) == [*range(LOG_EVERY, STEPS, LOG_EVERY), STEPS]
    for step, (epoch, loss, lr) in logged.items():
        first = step - step % LOG_EVERY + 1 if step % LOG_EVERY else step - LOG_EVERY + 1
        window = [per_step[s][1] for s in range(first, step + 1)]
        assert loss == pytest.approx(sum(window) / len(window), rel=1e-9), step
        assert (epoch, lr) == (per_step[step][0], per_step[step][2]), step


def test_cancel_a_local_run_then_resume(runs, capsys):
    """`launcher cancel` (SIGTERM to the launcher, which torchrun passes to every rank) while
    a 2-rank run trains: every rank saves the step it is on, status says preempted at that
    step, cancel then refuses, and `launcher resume` finishes the run."""
    rc, out, err = runs["cancel"]
    assert rc == 0 and "sent SIGTERM to the launcher" in out, err
    rd, proc = runs["epoch"], runs["cancelled"]
    assert proc.returncode == 75, proc.stdout[-2000:] + proc.stderr[-3000:]
    saved = json.loads(rd.preempted.read_text())["step"]
    assert 0 < saved < EPOCH_STEPS and rd.latest() == rd.checkpoint(saved)
    assert cli_mod.main(["status", str(rd.root)]) == 0
    said = capsys.readouterr().out
    assert f"preempted at step {saved} (SIGTERM)" in said and "ended" in said
    assert cli_mod.main(["cancel", str(rd.root)]) == 2  # nothing runs any more
    assert "is not running here" in capsys.readouterr().err
    done = runs["worlds"][3]
    assert (f"resuming {done.root} from step {saved} of {EPOCH_STEPS}"
            in runs["world_runs"][3].stdout)
    assert cli_mod.main(["status", str(done.root)]) == 0
    said = capsys.readouterr().out
    assert "finished" in said and f"{EPOCH_STEPS} of {EPOCH_STEPS}" in said


def _ledger(rd: RunDir, step: int | None = None) -> list[str]:
    ids = []
    for trace in sorted(rd.trace.glob("rank*.txt")):
        ids += [i for s, i in (line.split("\t") for line in trace.read_text().splitlines())
                if step is None or int(s) == step]
    return ids


@pytest.mark.parametrize("world", [1, 3])
def test_resume_on_another_world_size_trains_every_example_once(runs, world):
    """2 ranks, cancelled, then 1 or 3: the epoch's examples (shuffled) are each trained
    exactly once, and each rank decodes only its own rows."""
    rd, second = runs["worlds"][world], runs["world_runs"][world]
    assert second.returncode == 0, second.stderr[-3000:]
    saved = json.loads(runs["epoch"].preempted.read_text())["step"]
    plan = json.loads((rd.plan / "plan.json").read_text())
    assert (plan["world_size"], plan["grad_accum"], plan["global_batch"]) == (world, 6 // world, 96)
    ids = _ledger(rd)
    assert len(ids) == EPOCH_STEPS * 96 and len(set(ids)) == len(ids)
    step_one = sorted(_ledger(rd, step=1))
    assert step_one != sorted(f"tn-{k:05d}" for k in range(96)), "the epoch is in file order"
    # Resumed after `saved` steps of 96 examples: the rest, rows / world per rank.
    left = (EPOCH_STEPS - saved) * 96 // world
    assert decoded_per_epoch(rd) == [(r, 0, left, left) for r in range(world)]
    summary = json.loads(rd.summary.read_text())
    assert summary["steps"] == EPOCH_STEPS and summary["world_size"] == world
    assert [r[0] for r in steps_logged(rd)] == list(range(1, EPOCH_STEPS + 1))
    # The last checkpoint was written by `world` ranks: the manifest holds what each wrote.
    assert_manifest_is_what_each_rank_wrote(rd.latest(), world=world, strategy="ddp")


def copy_of(stopped_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    return out


def test_resume_refuses_a_world_size_that_cannot_keep_the_global_batch(tmp_path, runs, cli):
    out = copy_of(runs["stopped"], tmp_path)
    before = sorted(p.name for p in RunDir(out).checkpoints.iterdir())
    proc = cli("resume", out, "--nproc-per-node", "3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--nproc-per-node" in proc.stderr and "among [1, 2]" in proc.stderr
    assert sorted(p.name for p in RunDir(out).checkpoints.iterdir()) == before


def test_checkpoint_of_another_recipe_is_refused_saying_what_differs(tmp_path, runs, cli):
    out = copy_of(runs["stopped"], tmp_path)
    before = sorted(p.name for p in RunDir(out).checkpoints.iterdir())
    same = runs["recipe"]  # the chain's recipe and overrides
    proc = cli("run", *same, f"run.output_dir={out}",
               "task.labels=['World','Sports','Business','Science']")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "task.labels was ['World', 'Sports', 'Business', 'Sci/Tech']" in proc.stderr
    proc = cli("run", *same, f"run.output_dir={out}", "model.head_hidden=16")
    assert proc.returncode == 2 and "model.head_hidden was None" in proc.stderr
    proc = cli("run", *same, f"run.output_dir={out}", "scale.global_batch=128")
    assert proc.returncode == 2 and "scale.global_batch=64" in proc.stderr
    # the saved position counts examples of a shuffled order: not of another order
    proc = cli("run", *same, f"run.output_dir={out}", "data.shuffle=false")
    assert proc.returncode == 2 and "data.shuffle was True" in proc.stderr
    proc = cli("run", *same, f"run.output_dir={out}", "run.seed=7")
    assert proc.returncode == 2 and "run.seed was 42" in proc.stderr
    assert sorted(p.name for p in RunDir(out).checkpoints.iterdir()) == before
    # ... and as a user meets it, from a real process: exit 2, no traceback.
    proc = launcher("run", *same, f"run.output_dir={out}", "run.seed=7")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "run.seed was 42" in proc.stderr


def test_checkpoint_holds_nothing_that_loads_through_pickle(runs, tmp_path):
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from launcher.checkpoint.sharded import _MetadataUnpickler, _SafeReader

    ckpt = runs["reference"].latest()
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

    import pickle
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _MetadataUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
