"""Run a plan on Slurm through submitit: one task per node, each running the plan's launch.sh.

`run` submits and returns at once with the job id; `render` and `--dry-run` write the exact
sbatch script submitit will use to RUN_DIR/plan/sbatch.sh. What users get wrong on real
clusters (no sbatch, an unknown partition, a time limit too short to save in, more GPUs than
processes) is refused before anything is queued.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional

from rich.console import Console

from launcher.errors import RecipeError
from launcher.executors.base import Executor, JobState
from launcher.plan.build import Plan
from launcher.plan.render import private, write_file
from launcher.run_dir import RunDir

def _partitions() -> list[str]:
    if shutil.which("sinfo") is None:
        return []  # partitions are then left for sbatch to check
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    return [p.rstrip("*") for p in out.stdout.split()] if out.returncode == 0 else []


def parameters(plan: Plan) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for this plan."""
    s, c = plan.recipe.slurm, plan.recipe.checkpoint
    extra = {}
    for line in s.extra_sbatch:
        key, _, value = line.lstrip("-").partition("=")
        extra[key] = value or True
    exported = extra.get("export")
    if s.pass_env and isinstance(exported, str) and not exported.upper().startswith("ALL"):
        # --export=NONE or a list: the job would not see the variables pass_env names.
        names = [] if exported.upper() in ("NONE", "NIL") else exported.split(",")
        extra["export"] = ",".join([*names, *(n for n in s.pass_env if n not in names)])
    env = {"SUBMITIT_PREEMPT_SIGNAL": PREEMPT_SIGNAL, **s.env}
    # The batch shell must outlive `scancel --signal=USR1 --full` (bash dies of USR1 by
    # default, and the job with it, before submitit can requeue); the steps handle the signal.
    setup = ["trap '' USR1", *s.setup,
             *(f"export {k}={shlex.quote(str(v))}" for k, v in env.items())]
    params = {
        "job_name": plan.name, "nodes": plan.nodes, "ntasks_per_node": 1, "time": s.time_min,
        "partition": s.partition, "account": s.account, "qos": s.qos,
        "constraint": s.constraint, "gpus_per_node": gpus_per_node(plan),
        "cpus_per_task": cpus_per_task(plan), "mem": s.mem,
        "exclusive": True if s.exclusive else None,
        # Slurm sends SIGUSR1 this long before the time limit: the ranks save in that time.
        "signal_delay_s": c.grace_s, "setup": setup or None,
        # Slurm 22.05's srun does not take --cpus-per-task from the job (SLURM_CPUS_PER_TASK):
        # without it, a cluster that binds tasks to cores would give the step one CPU.
        "srun_args": [f"--cpus-per-task={cpus_per_task(plan)}"],
        "additional_parameters": extra or None,
    }
    return {k: v for k, v in params.items() if v is not None}


def gpus_per_node(plan: Plan) -> Optional[int]:
    """GPUs each node asks for: one per process on a cuda plan, none on a cpu plan."""
    if plan.device != "cuda":
        return None
    return plan.recipe.slurm.gpus_per_node or plan.procs_per_node


def cpus_per_task(plan: Plan) -> int:
    """CPUs for a node's one task: each process and its DataLoader workers get a core."""
    s, d = plan.recipe.slurm, plan.recipe.data
    return s.cpus_per_task or plan.procs_per_node * (d.num_workers + 1)


# Slurm's warning before the time limit, as submitit's handler and our ranks expect it. It is
# read when submitit is imported, here and (through the job's environment) on the nodes.
PREEMPT_SIGNAL = "USR1"


def executor_for(plan: Plan, folder: Optional[Path] = None):
    """A submitit SlurmExecutor for the plan; its logs go to RUN_DIR/slurm/<job id>/."""
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL
    import submitit

    folder = folder or RunDir(plan.run_dir).slurm / "%j"
    ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=plan.recipe.slurm.max_requeues)
    ex.update_parameters(**parameters(plan))
    return ex


def node_env(plan: Plan) -> dict[str, str]:
    from launcher.executors.local import local_env
    # Threads per rank are the node's business (torchrun sets 1), not this login node's.
    return {k: v for k, v in local_env(plan).items() if k != "OMP_NUM_THREADS"}


def record_job(rd: RunDir, job_id: str) -> None:
    rd.slurm.mkdir(parents=True, exist_ok=True)
    rd.slurm_job.write_text(json.dumps({"job_id": job_id}) + "\n")


@contextlib.contextmanager
def submitting(plan: Plan) -> Iterator[None]:
    """Around a submission. submitit writes its own copy of the sbatch script (with
    slurm.env's values) into RUN_DIR/slurm/: that copy is created readable by its owner only,
    while the job keeps the user's umask (sbatch takes it from SLURM_UMASK). Variables named
    in slurm.pass_env reach the job through sbatch's environment (--export=ALL by default),
    never through a file."""
    if not private(plan):
        yield
        return
    mask = os.umask(0o077)
    previous = os.environ.get("SLURM_UMASK")
    os.environ.setdefault("SLURM_UMASK", f"{mask:04o}")
    try:
        yield
    finally:
        os.umask(mask)
        if previous is None:
            os.environ.pop("SLURM_UMASK", None)


def job_id(rd: RunDir) -> Optional[str]:
    return json.loads(rd.slurm_job.read_text())["job_id"] if rd.slurm_job.is_file() else None


def slurm_state(job: str) -> dict[str, str]:
    """scontrol's view of a job (works without Slurm's accounting database)."""
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True)
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return {k: fields[k] for k in ("JobState", "NodeList", "RunTime", "Restarts", "Reason")
            if k in fields}


def request(plan: Plan) -> str:
    """What the job asks Slurm for, as a key: points of a sweep with the same key can share
    one job array (one sbatch script); any difference needs an array of its own."""
    return json.dumps(parameters(plan), sort_keys=True)


def sbatch_script(plan: Plan) -> str:
    ex = executor_for(plan)
    return ex._make_submission_file_text(ex._submitit_command_str, "render")


class SlurmExecutor(Executor):
    name = "slurm"

    def refuse(self, plan: Plan) -> None:
        s, c = plan.recipe.slurm, plan.recipe.checkpoint
        if shutil.which("sbatch") is None:
            raise RecipeError("run.executor", "is 'slurm' but there is no sbatch on PATH here",
                              "run from a Slurm login node (or `module load slurm`), or use "
                              "--executor local")
        partitions = _partitions()
        if s.partition and partitions and s.partition not in partitions:
            raise RecipeError("slurm.partition", f"'{s.partition}' is not a partition of this "
                              f"cluster (sinfo lists {', '.join(partitions)})",
                              f"set slurm.partition to one of {', '.join(partitions)}")
        if s.time_min * 60 <= 2 * c.grace_s:
            raise RecipeError("slurm.time_min", f"is {s.time_min} min, too short for a job that "
                              f"is warned checkpoint.grace_s={c.grace_s} s before its end to save",
                              f"set slurm.time_min above {2 * c.grace_s // 60 + 1}, or lower "
                              "checkpoint.grace_s")
        if s.gpus_per_node is not None and plan.device == "cpu":
            raise RecipeError("slurm.gpus_per_node", f"is {s.gpus_per_node} but the plan "
                              f"trains on cpu (scale.device={plan.recipe.scale.device}), so the "
                              "GPUs would sit idle", "remove slurm.gpus_per_node, or set "
                              "scale.device=cuda")
        if s.gpus_per_node is not None and s.gpus_per_node < plan.procs_per_node:
            raise RecipeError("slurm.gpus_per_node", f"is {s.gpus_per_node} but the plan runs "
                              f"{plan.procs_per_node} process(es) per node on cuda, one GPU "
                              "each; every node would refuse to start",
                              f"set slurm.gpus_per_node={plan.procs_per_node} (or leave it "
                              f"unset), or scale.procs_per_node={s.gpus_per_node}")
        if s.gpus_per_node is not None and s.gpus_per_node > plan.procs_per_node:
            raise RecipeError("slurm.gpus_per_node", f"is {s.gpus_per_node} but the plan runs "
                              f"{plan.procs_per_node} process(es) per node (scale.procs_per_node; "
                              f"strategy {plan.recipe.scale.strategy} uses one GPU per "
                              "process), so GPUs would sit idle",
                              f"set scale.procs_per_node={s.gpus_per_node} or "
                              f"slurm.gpus_per_node={plan.procs_per_node}")
        missing = [name for name in s.pass_env if name not in os.environ]
        if missing:
            raise RecipeError("slurm.pass_env", f"{', '.join(missing)} is not set in this shell, "
                              "so the job could not take it from here",
                              f"export {missing[0]}=... before `launcher run`, or remove it "
                              "from slurm.pass_env")

    def prepare(self, plan: Plan) -> Path:
        plan_dir = super().prepare(plan)
        write_file(plan_dir / "sbatch.sh", sbatch_script(plan), private=private(plan))
        return plan_dir

    def submit(self, plan: Plan, plan_dir: Path, console: Console) -> int:
        """Queue the job and return at once with its id."""
        from launcher.executors.slurm_job import NodeJob

        rd = RunDir(plan.run_dir)
        self.clear_outcome(rd)
        with submitting(plan):
            job = executor_for(plan).submit(NodeJob(str(plan_dir), node_env(plan),
                                                    plan.recipe.checkpoint.grace_s))
        record_job(rd, job.job_id)
        console.print(f"[bold]submitted[/] Slurm job {job.job_id} ({plan.nodes} node(s) x "
                      f"{plan.procs_per_node}); run directory {plan.run_dir}", highlight=False)
        for what, cmd in (("follow", "status"), ("logs", "logs"), ("stop", "cancel")):
            console.print(f"  {what}: python -m launcher {cmd} {plan.run_dir}", highlight=False)
        return 0

    def state(self, rd: RunDir) -> Optional[JobState]:
        job = job_id(rd)
        if job is None:
            return None
        found = slurm_state(job)
        words = found.get("JobState", "gone from scontrol")
        return JobState(self.name, job, words, running=words in _ALIVE,
                        nodes=found.get("NodeList", "") if found.get("NodeList") != "(null)"
                        else "", restarts=int(found.get("Restarts", "0")))

    def cancel(self, rd: RunDir, console: Console) -> int:
        job = job_id(rd)
        if job is None:
            raise RecipeError("RUN_DIR", f"{rd.root} was not submitted to Slurm",
                              "stop a local run with `launcher cancel` on its host")
        subprocess.run(["scancel", job], check=True)
        console.print(f"cancelled Slurm job {job}; resume it later with `python -m launcher "
                      f"resume {rd.root} --executor slurm`", highlight=False)
        return 0


# scontrol's states of a job that has not ended yet.
_ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
          "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}
