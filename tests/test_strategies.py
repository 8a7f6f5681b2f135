"""One recipe field picks the strategy; every strategy trains like DDP and resumes from its own
checkpoint format.

Each run is the tiny recipe on 2 gloo ranks in fp32 for 20 steps. A strategy's run is stopped
by SIGTERM on rank 1 after step 12 (so it saves step 13), resumed, and compared with one DDP
run that never stopped: per-step losses within LOSS_TOL and final weights within WEIGHT_TOL.
ZeRO-1/2 come out bit-identical on these 2 ranks; ZeRO-3 reduces gradients per partition, in
another order, and DeepSpeed's CPU Adam (ZeRO-3 offload) computes beta^t by multiplying up
step by step in a run and by pow() after a load, so those differ by float rounding (about
1e-7 on the loss, 1e-6 on a weight). FSDP is really sharded on CPU too (each rank holds half
of every parameter, the DCP checkpoint has two row blocks of each); it reduce-scatters
gradients and clips by a norm summed from shards, which may round differently from DDP's
all-reduce (on these 2 ranks it came out bit-identical, 2026-11-30). A lost
optimizer state, a wrong data position or a wrong learning rate after the resume moves the
loss by 1e-3 or more.

Two waves, each one 2-rank torchrun process group in which the engine's Trainer trains run
after run (tests/train_in_turn.py: a launch per run would import torch, transformers and
DeepSpeed on 22 ranks), one after the other in the background from the session's start (a
together.Chain). First the DDP run and every strategy's run until its stop, made by
launcher's own planning (the stop is the plan's fault, as a launch with LAUNCHER_FAULT writes
it). Then a copy of every stopped run is resumed (the stopped runs stay as wave 1 left them,
for their own checks: a resume keeps only the last 2 checkpoints): `launcher resume
--dry-run` picks its checkpoint and writes its plan, and a second process group, which has
nothing of the first but the files it left, trains those plans. A real `launcher resume`
launch, its exit status and its torchrun, is tested for DDP by test_resume.py and for ZeRO-2
by test_ctrl_c.py. Eval is not under test here: 32 examples at the last step, the same in
every run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import TINY
from together import Chain, Early
from manifest_check import assert_manifest_is_what_each_rank_wrote
from launcher.checkpoint import store, trust
from launcher.engine import faults
from launcher.plan.build import build
from launcher.plan.render import write as write_plan
from launcher.recipe.load import load
from launcher.run_dir import RunDir

LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-5
STEPS, SIGNAL_AT = 20, 12
OVERRIDES = ["scale.procs_per_node=2", f"run.max_steps={STEPS}", "run.epochs=None",
             "run.log_every=1", "eval.every=0", "eval.max_examples=32", "checkpoint.every=10",
             "checkpoint.keep_last=2"]
ZERO = ("zero1", "zero2", "zero3", "zero3_offload")
STRATEGIES = (*ZERO, "fsdp")
STOP = f"at=step,step={SIGNAL_AT},rank=1,do=TERM"


def losses(rd: RunDir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, rd.metrics.read_text().splitlines())
            if "lr" in r}


NAMES = ("ddp", *STRATEGIES)


def _waves(root: Path) -> dict:
    """The plans of wave 1, made by launcher's own planning; wave 1, and wave 2 once wave 1
    has ended, trained in the background (a Chain each), not waited for."""
    plan_dirs = []
    for name in NAMES:
        plan = build(load(TINY, [*OVERRIDES, f"scale.strategy={name}"]),
                     run_dir=str(root / name))
        if name != "ddp":
            plan = dataclasses.replace(plan, faults=faults.parse(STOP))
        write_plan(plan, RunDir(root / name).plan)
        plan_dirs.append(RunDir(root / name).plan)

    def wave_1(chain: Chain) -> dict:
        chain.in_turn(*plan_dirs, nproc=2, timeout=900)
        return {name: json.loads((root / name / "cell.json").read_text()) for name in NAMES}

    first = Chain(wave_1)

    def wave_2(chain: Chain) -> dict:
        names = [name for name, cell in first.result().items()
                 if name != "ddp" and cell["result"].get("preempted")]
        copies = {name: RunDir(root / "resumed" / name) for name in names}
        for name, copy in copies.items():
            shutil.copytree(root / name, copy.root, symlinks=True)
        said = {}
        for name, proc in zip(names, chain.launch(*(["resume", copy.root, "--dry-run"]
                                                    for copy in copies.values()))):
            assert proc.returncode == 0, proc.stdout + proc.stderr
            said[name] = proc.stdout
        chain.in_turn(*(copy.plan for copy in copies.values()), nproc=2, timeout=900)
        return {name: (copy, said[name], json.loads((copy.root / "cell.json").read_text()))
                for name, copy in copies.items()}

    return {"root": root, "wave_1": first, "wave_2": Chain(wave_2)}


EARLY = Early("strategies", _waves, reads=("stopped", "resumed"))  # with the session


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> dict:
    """Wave 1: the DDP run that never stops and each strategy's run stopped by SIGTERM on
    rank 1 after step SIGNAL_AT, in turn in one process group. {name: (run dir, its cell:
    what Trainer.train returned)}."""
    started = EARLY.start(tmp_path_factory)
    return {name: (RunDir(started["root"] / name), cell)
            for name, cell in started["wave_1"].result().items()}


@pytest.fixture(scope="module")
def ddp(stopped) -> RunDir:
    rd, cell = stopped["ddp"]
    assert cell["result"]["steps"] == STEPS and rd.final.is_dir(), cell
    # The first cell: nothing had imported DeepSpeed, and its export did not either (accelerate's
    # unwrapping in save_pretrained probes for it: 1.1 s at the end of every DDP run).
    assert not cell["deepspeed_imported"], cell
    return rd


@pytest.fixture(scope="module")
def resumed(stopped, tmp_path_factory) -> dict:
    """Wave 2: a copy of every stopped run resumed. `launcher resume COPY --dry-run` does all
    a resume does before its launch (the checkpoint it goes on from, the refusals, the plan it
    writes); then one 2-rank process group started afresh, with nothing of wave 1 but the
    copies' files, trains those plans in turn. {name: (the copy, what its resume printed,
    its cell)}."""
    return EARLY.start(tmp_path_factory)["wave_2"].result()


def _stopped_at_the_signal(rd: RunDir, cell: dict) -> None:
    """Stopped as a launch is: every rank saved the step after the signal, preempted.json
    says so (what `launcher resume` and `launcher status` read)."""
    assert cell["result"] == {"preempted": True, "step": SIGNAL_AT + 1}, cell
    info = json.loads(rd.preempted.read_text())
    assert (info["step"], info["signal"]) == (SIGNAL_AT + 1, "SIGTERM"), info


def _assert_own_format(ckpt: Path, strategy: str) -> None:
    """The strategy's own sharded files: one ZeRO optimizer shard per rank, or DCP shards."""
    names = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    if strategy in ZERO:
        assert not any(n.startswith("dcp/") for n in names)
        for rank in (0, 1):
            assert f"deepspeed/state/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in names
    else:
        assert {"dcp/__0_0.distcp", "dcp/__1_0.distcp"} <= names
        assert not any(n.startswith("deepspeed/") for n in names)
    assert store.problem(ckpt) is None  # the manifest covers the strategy's files
    if strategy in ("zero1", "zero2", "fsdp"):
        assert_manifest_is_what_each_rank_wrote(ckpt, world=2, strategy=strategy)
    if strategy == "fsdp":
        assert_sharded_by_fsdp(ckpt, world=2)


def assert_sharded_by_fsdp(ckpt: Path, world: int) -> None:
    """Every weight of the model is in the DCP checkpoint as `world` row blocks, one per rank
    (DDP writes each as one whole tensor), and every rank logged its share of the elements."""
    from launcher.checkpoint.sharded import _SafeReader

    meta = _SafeReader(str(ckpt / "dcp")).read_metadata().state_dict_metadata
    weights = {k: m for k, m in meta.items() if k.startswith("model.") and len(m.size) == 2}
    assert weights
    for key, item in weights.items():
        rows = sorted((c.offsets[0], c.sizes[0]) for c in item.chunks)
        assert len(rows) == world and sum(n for _, n in rows) == item.size[0], (key, rows)
    shares = []
    for rank in range(world):
        text = (ckpt.parents[1] / "logs" / f"rank{rank}.log").read_text()
        found = re.findall(r"fsdp: (\d+) units, this rank holds (\d+) of (\d+) parameter", text)
        assert found, f"rank {rank} did not log its FSDP share"
        units, mine, total = map(int, found[-1])
        shares.append(mine)
        assert units >= 3 and abs(mine - total / world) <= 0.05 * total, (rank, mine, total)
    assert sum(shares) == total  # the shards add up to the model: nothing is replicated


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_stopped_saves_its_own_checkpoint_format(tmp_path, stopped, cli, strategy):
    rd, cell = stopped[strategy]
    _stopped_at_the_signal(rd, cell)
    saved = SIGNAL_AT + 1
    assert rd.latest() == rd.checkpoint(saved)
    _assert_own_format(rd.latest(), strategy)
    # DeepSpeed imports mlflow for its autotuner when it can: the engine hides it (1.1 s a rank)
    assert cell["mlflow"] == "not imported", cell

    if strategy in ZERO:
        # DeepSpeed's shards are cut for 2 ranks: another world size is refused before launch.
        before = sorted(p.name for p in rd.checkpoints.iterdir())
        other = cli("resume", rd.root, "--nproc-per-node", "1")
        assert other.returncode == 2, other.stdout + other.stderr
        assert "DeepSpeed ZeRO checkpoint of 2 ranks" in other.stderr
        assert sorted(p.name for p in rd.checkpoints.iterdir()) == before
        # Every global in DeepSpeed's real pickles is on the scanner's allow-list...
        assert trust.refusal(rd.latest()) is None
        if strategy == "zero2":
            # ...and one it never writes is refused before DeepSpeed could unpickle it.
            from test_untrusted_checkpoints import assert_crafted_zero_is_refused
            assert_crafted_zero_is_refused(rd, tmp_path)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_trains_like_ddp_and_resumes_from_its_own_checkpoint(ddp, stopped, resumed,
                                                                      strategy):
    assert stopped[strategy][1]["result"] == {"preempted": True, "step": SIGNAL_AT + 1}
    rd, said, second = resumed[strategy]
    assert f"resuming {rd.root} from step {SIGNAL_AT + 1} of {STEPS}" in said, said
    assert second["result"]["steps"] == STEPS, second
    assert json.loads(rd.summary.read_text())["resumed_from"] == SIGNAL_AT + 1

    mine, ref = losses(rd), losses(ddp)
    assert sorted(mine) == list(range(1, STEPS + 1)) == sorted(ref)
    off = {s: abs(mine[s] - ref[s]) for s in ref if abs(mine[s] - ref[s]) > LOSS_TOL}
    assert not off, f"{strategy} losses differ from DDP's by more than {LOSS_TOL}: {off}"
    a = load_file(str(rd.final / "model.safetensors"))
    b = load_file(str(ddp.final / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in b)
    assert worst[0] <= WEIGHT_TOL, f"{strategy} weights differ from DDP's: {worst}"
    if strategy == "fsdp":
        # The export is a whole Hugging Face model (gathered from the shards), not FSDP's.
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained(rd.final)
        assert type(model).__name__ == "BertForSequenceClassification"
        assert json.loads((rd.final / "config.json").read_text())["architectures"] == [
            "BertForSequenceClassification"]
