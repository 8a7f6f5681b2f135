"""The Slurm path against a real Slurm: one controller and two slurmd (n1, n2) on this host,
started by slurm/local-cluster.sh for this module and stopped after it.

Every job of the module is submitted at once (fixture `jobs`): a 2-node reference run, the
same run preempted by USR1, a cuda plan every rank refuses, and a sweep. Most of a job's time
here is waiting (start-up, the requeue's credential expiry, the scheduler's passes), and the
cluster has room for them together, so those waits overlap instead of adding up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import REPO, TINY, cli_env
from launcher.run_dir import RunDir

CLUSTER = REPO / "slurm" / "local-cluster.sh"
# 100 steps (about 1.6 epochs): long enough to be signalled while training (the signal goes
# at step 5 or so; a step takes 40-100 ms here). The nodes' GPUs are stand-ins (torch sees no
# CUDA), so runs that train say scale.device=cpu: under Slurm, auto means cuda. No eval
# (data.eval=none): what is checked here is the job, not the model's score.
STEPS = 100
ARGS = ["--executor", "slurm", "--nodes", "2", f"run.max_steps={STEPS}", "run.epochs=None",
        "checkpoint.every=50", "data.eval=none", "run.log_every=1", "slurm.time_min=10",
        "checkpoint.grace_s=60", "scale.device=cpu"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("slurmctld") is None:
        pytest.fail("Slurm is not installed: apt-get install -y slurmctld slurmd slurm-client "
                    "munge (.ci/run does)")
    where = tmp_path_factory.mktemp("slurm")
    # Ports of our own, so a cluster someone left up on the defaults is not disturbed.
    env = dict(os.environ, LAUNCHER_SLURM_CTLD_PORT="16917", LAUNCHER_SLURM_NODE_PORT="17101")
    up = subprocess.run([str(CLUSTER), "up", str(where)], env=env, capture_output=True,
                        text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    conf = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
    yield {"SLURM_CONF": conf}
    subprocess.run([str(CLUSTER), "down", str(where)], env=env, timeout=120)


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "launcher", *map(str, args)]


def launcher(cluster, *args, timeout=120):
    return subprocess.run(_command(*args), cwd=REPO, env={**cli_env(), **cluster},
                          capture_output=True, text=True, timeout=timeout)


def scontrol_job(cluster, job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], env={**os.environ, **cluster},
                         capture_output=True, text=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


# Timeouts here only catch a hung job: on the 2-core machine at load average 20, the 150-step
# 2-node run took 351 s (measured 2026-11-30).
def wait_for(predicate, timeout: float, what: str, rd: RunDir) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            logs = "\n".join(p.read_text(errors="replace")[-2000:]
                             for p in sorted((rd.root / "slurm").rglob("*_log.*")))
            pytest.fail(f"timed out waiting for {what}; submitit logs:\n{logs}")
        time.sleep(0.5)


def _submitted(proc: subprocess.Popen, out: Path, printed: dict) -> tuple[RunDir, str]:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "submitted Slurm job" in stdout and "launcher status" in stdout
    printed[out.name] = stdout + stderr
    rd = RunDir(out)
    return rd, json.loads(rd.slurm_job.read_text())["job_id"]


SWEEP = ["scale.procs_per_node=1,2", "--executor", "slurm", "--set", "scale.device=cpu",
         "--set", "slurm.time_min=5", "--set", "run.max_steps=2", "--set", "run.epochs=None",
         "--set", "run.log_every=1", "--set", "checkpoint.grace_s=60", "--set", "data.eval=none"]


@pytest.fixture(scope="module")
def jobs(cluster, tmp_path_factory):
    """Submit every job of the module at once; send the preempted run its USR1 once it trains.
    Yields {name: (RunDir, job id)} for the runs, what each `run` printed under "printed",
    and the sweep's (Popen, folder)."""
    root = tmp_path_factory.mktemp("slurm-jobs")
    env = {**cli_env(), **cluster}
    # The sweep's command waits for its points: it runs beside everything else.
    sweep = subprocess.Popen(_command("sweep", TINY, *SWEEP, "--out", root / "sweep"), cwd=REPO,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = {
        "reference": [*ARGS],
        "preempted": [*ARGS],
        # auto is cuda under Slurm: a GPU per process, 2 per node
        "cuda": ["--executor", "slurm", "--nodes", "2", "--nproc-per-node", "2",
                 "run.max_steps=2", "run.epochs=None", "slurm.time_min=10",
                 "checkpoint.grace_s=60"],
    }
    procs = {name: subprocess.Popen(_command("run", TINY, *args,
                                             f"run.output_dir={root / name}"),
                                    cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    try:
        printed: dict[str, str] = {}
        found = {name: _submitted(proc, root / name, printed) for name, proc in procs.items()}
        found["printed"] = printed
        found["ref_nodes"] = []
        rd, job = found["preempted"]
        ref_job = found["reference"][1]

        def training():
            found["ref_nodes"].append(scontrol_job(cluster, ref_job).get("NodeList"))
            return rd.metrics.is_file() and len(rd.metrics.read_text().splitlines()) >= 5

        wait_for(training, 400, "training to start", rd)
        subprocess.run(["scancel", "--signal=USR1", "--full", job],
                       env={**os.environ, **cluster}, check=True)
        found["sweep"] = (sweep, root / "sweep")
        yield found
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def finished(cluster, jobs):
    rd, job = jobs["reference"]
    nodes = jobs["ref_nodes"]

    def done():
        nodes.append(scontrol_job(cluster, job).get("NodeList"))
        return rd.summary.is_file()

    wait_for(done, 600, "the job to finish", rd)
    return rd, job, nodes


def test_two_node_job_trains_across_n1_and_n2(finished):
    rd, job, nodes = finished
    summary = json.loads(rd.summary.read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert "n[1-2]" in nodes  # Slurm's own record of the allocation
    hosts = {r: rd.rank_log(r).read_text() for r in (0, 1)}
    assert "Slurm node n1" in hosts[0] + hosts[1] and "Slurm node n2" in hosts[0] + hosts[1]
    rendered = (rd.plan / "sbatch.sh").read_text()
    assert "--nodes=2" in rendered and "--signal=USR1@60" in rendered
    # what `render` showed is what was submitted
    assert (rd.root / "slurm" / job / f"{job}_submission.sh").read_text() == rendered


def test_usr1_checkpoints_requeues_and_finishes_with_the_same_weights(cluster, jobs,
                                                                      finished):
    """Signalled by `scancel --signal=USR1 --full` once it had logged 5 steps (in `jobs`)."""
    ref, _, _ = finished
    rd, job = jobs["preempted"]
    wait_for(lambda: (rd.root / "preempted.json").is_file() or rd.latest() is not None, 60,
             "the preemption checkpoint", rd)
    wait_for(lambda: rd.summary.is_file(), 600, "the requeued job to finish", rd)
    summary = json.loads(rd.summary.read_text())
    assert summary["resumed_from"] is not None and 5 <= summary["resumed_from"] < STEPS
    assert int(scontrol_job(cluster, job).get("Restarts", "0")) >= 1
    a = load_file(str(ref.final / "model.safetensors"))
    b = load_file(str(rd.final / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


def test_status_logs_and_cancel(cluster, finished):
    rd, job, _ = finished
    status = launcher(cluster, "status", rd.root)
    assert status.returncode == 0 and "finished" in status.stdout and job in status.stdout
    logs = launcher(cluster, "logs", rd.root, "--rank", "1")
    assert logs.returncode == 0 and "rank 1 of 2" in logs.stdout


def test_cuda_plan_gets_gpus_on_both_nodes_and_is_refused_without_cuda(cluster, jobs):
    """auto is cuda under Slurm: the job asks for a GPU per process, Slurm gives both nodes
    theirs (GRES stand-ins), and every rank, seeing no CUDA, refuses with one line."""
    rd, job = jobs["cuda"]
    out = rd.root
    assert "#SBATCH --gpus-per-node=2" in (rd.plan / "sbatch.sh").read_text()
    wait_for(lambda: scontrol_job(cluster, job).get("JobState") not in
             ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", None), 300,
             "the job to end", rd)
    state = scontrol_job(cluster, job)
    assert state["JobState"] == "FAILED" and state["NodeList"] == "n[1-2]", state
    nodes = set()
    for rank in range(4):
        log = rd.rank_log(rank).read_text()
        refused = [ln for ln in log.splitlines() if "refused:" in ln]
        assert len(refused) == 1 and "Traceback" not in log, log
        line = refused[0]
        # Slurm's allocation as each node's task saw it, and what the plan expected
        assert "CUDA_VISIBLE_DEVICES=0,1" in line and "SLURM_GPUS_ON_NODE=2" in line, line
        assert "2 rank(s) on this node" in line and "no CUDA device" in line, line
        nodes.add(line.split("Slurm node ")[1].split(",")[0])
        assert rd.rank_error(rank).read_text().strip() in line
    assert nodes == {"n1", "n2"}
    assert not rd.metrics.exists() and not rd.checkpoints.exists()  # nothing was built
    status = launcher(cluster, "status", out)
    assert status.returncode == 0 and f"{job}: FAILED" in status.stdout, status.stdout
    assert "failed: rank" in status.stdout and "CUDA_VISIBLE_DEVICES=0,1" in status.stdout
    assert "Traceback" not in jobs["printed"]["cuda"] + status.stdout + status.stderr


def test_sweep_points_with_the_same_request_share_one_array():
    from launcher.plan import build
    from launcher.recipe.load import load
    from launcher.commands.sweep import array_script, groups, points

    grid = points(["scale.procs_per_node=1,2", "optim.lr=1e-3,2e-3", "slurm.time_min=5,10"])
    plans = [build(load(TINY, ["run.executor=slurm", *p, f"run.output_dir=/sweep/{i}"]))
             for i, p in enumerate(grid)]
    split = groups(plans)
    assert len(split) == 4 and all(len(g) == 2 for g in split)
    for members in split:  # the two points of an array differ only in the learning rate
        a, b = (plans[i].recipe for i in members)
        assert (a.scale.procs_per_node, a.slurm.time_min) == (b.scale.procs_per_node,
                                                              b.slurm.time_min)
        assert a.optim.lr != b.optim.lr
    script = array_script(plans[split[0][0]], Path("/sweep/slurm/%j"), 2)
    assert "#SBATCH --array=0-1%2" in script and "%A_%a" in script


def test_sweep_gives_each_slurm_request_its_own_submission(cluster, jobs):
    """Two points that differ in their Slurm request (processes, so CPUs per task): two
    submissions. (That points with the same request share one array is checked above.)"""
    proc, out = jobs["sweep"]
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    info = json.loads((out / "sweep.json").read_text())
    assert len(info["points"]) == 2 and len(info["arrays"]) == 2
    assert len({p["job_id"].split("_")[0] for p in info["points"]}) == 2
    for array in info["arrays"]:
        (point,) = array["points"]
        procs = int(point.split("=")[1])
        script = Path(array["sbatch"]).read_text()
        assert "#SBATCH --time=5\n" in script and "--nodes=1" in script
        assert f"#SBATCH --cpus-per-task={procs}\n" in script  # procs x (0 workers + 1)
        assert "gpus" not in script  # a cpu plan asks for no GPUs
        job = array["job_id"]
        submitted = Path(array["sbatch"]).parent / job / f"{job}_submission.sh"
        assert submitted.read_text() == script  # what the sweep wrote is what Slurm got
        summary = json.loads((out / point.replace("scale.", "") / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["world_size"] == procs
        assert point in stdout  # a row of the table per point
    status = launcher(cluster, "status", out)
    assert status.returncode == 0, status.stderr
    for p in info["points"]:
        row = next(ln for ln in status.stdout.splitlines() if p["point"] in ln)
        assert p["job_id"] in row and "finished" in row and p["run_dir"] in row


def test_mistakes_are_caught_before_submission(cluster, tmp_path):
    out = tmp_path / "never"
    cases = [
        (["slurm.partition=gpu-big"], "slurm.partition", "debug"),
        (["slurm.time_min=1", "checkpoint.grace_s=60"], "slurm.time_min", "grace_s"),
        (["scale.device=cuda", "slurm.gpus_per_node=8"], "slurm.gpus_per_node",
         "scale.procs_per_node"),
        (["slurm.gpus_per_node=1"], "slurm.gpus_per_node", "scale.device=cuda"),
    ]
    for extra, field, fix in cases:
        proc = launcher(cluster, "run", TINY, *ARGS, f"run.output_dir={out}", *extra)
        assert proc.returncode == 2 and field in proc.stderr and fix in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()
    env = {**cli_env(), **cluster, "PATH": str(tmp_path)}  # no sbatch anywhere on it
    proc = subprocess.run([sys.executable, "-m", "launcher", "run", str(TINY), *ARGS,
                           f"run.output_dir={out}"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "no sbatch on PATH" in proc.stderr and not out.exists()
