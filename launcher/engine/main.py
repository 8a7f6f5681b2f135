"""One rank of a job: `python -m launcher.engine RUN_DIR/plan/plan.json` (under torchrun).

The engine reads the plan file; from the environment only what others define there
(torch.distributed's and Slurm's variables, the trackers' MLFLOW_* / WANDB_* settings), no
setting of ours. What the loop does besides training (time itself for `launcher bench`, fail on
purpose for the fault tests) comes from the plan too, handed to the trainer here as step hooks
(engine/hooks.py).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from launcher.engine.hooks import Chain, StepHooks
from launcher.op_builds import StaleBuildLock
from launcher.plan.build import Plan
from launcher.run_dir import RunDir


def _setup_logging(rd: RunDir, rank: int) -> None:
    rd.logs.mkdir(parents=True, exist_ok=True)
    path = rd.rank_log(rank)
    if rank != 0:
        # Everything a non-zero rank prints, C++ warnings included, goes to its own log only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s"))
    root = logging.getLogger("launcher")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def step_hooks(plan: Plan, rank: int) -> StepHooks:
    """The hooks the plan asks for: the fault tests' faults, the bench's step timer."""
    hooks: list[StepHooks] = []
    if plan.faults:
        from launcher.engine.faults import Faults
        hooks.append(Faults(plan.faults, rank))
    if plan.bench is not None:
        from launcher.engine.step_timer import StepTimer
        hooks.append(StepTimer(plan))
    return Chain(hooks) if hooks else StepHooks()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m launcher.engine PLAN_JSON", file=sys.stderr)
        return 2
    plan_path = Path(argv[0])
    plan = Plan.from_json(plan_path.read_text())
    rd = RunDir(plan.run_dir)
    rank = int(os.environ.get("RANK", "0"))
    _setup_logging(rd, rank)
    import socket
    where = os.environ.get("SLURMD_NODENAME")
    logging.getLogger("launcher.engine").info(
        "rank %d of %s on %s%s", rank, os.environ.get("WORLD_SIZE", "1"), socket.gethostname(),
        f" (Slurm node {where}, job {os.environ.get('SLURM_JOB_ID')})" if where else "")
    from launcher.engine import device
    try:
        device.check(plan)  # before the heavy imports and before anything is built
    except device.DeviceUnavailable as err:
        return _refuse(rd, rank, err)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    trainer, finished = None, False
    try:
        from launcher.engine.trainer import Trainer

        trainer = Trainer(plan, plan_path.parent, hooks=step_hooks(plan, rank))
        trainer.train()
        finished = True
        _FINISHED.append(trainer)
        return 0
    except StaleBuildLock as err:  # before DeepSpeed would wait on it forever (op_builds.py)
        return _refuse(rd, rank, err)
    except BaseException as err:
        # The executor names the first rank with an error file as the job's root cause.
        text = traceback.format_exc()
        logging.getLogger("launcher.engine").error("failed: %s\n%s", err, text)
        rd.rank_error(rank).write_text(text)
        raise
    finally:
        if trainer is not None:
            trainer.close()
        import torch.distributed as dist
        if dist.is_initialized() and not finished:
            dist.destroy_process_group()


# A finished rank's trainer and process group are never freed: the rank leaves by os._exit
# (leave). Freeing them tears down the gloo group from the main thread, which holds the GIL
# while it joins gloo's worker threads, and a worker still dropping the last collective's
# tensor waits for the GIL: the rank hangs there, its run finished and saved, and torchrun waits
# on it forever (seen once in a suite run on a loaded machine; py-spy: ~ProcessGroupGloo in
# std::thread::join under the DDP Reducer's dealloc, the worker in ~AsyncAllreduceWork waiting
# for the GIL).
_FINISHED: list = []


def _refuse(rd: RunDir, rank: int, err: Exception) -> int:
    """One line, no traceback: in this rank's log, its error file (`launcher status` shows it)
    and, from rank 0, on the terminal (other ranks' stderr is their log already)."""
    logging.getLogger("launcher.engine").error("refused: %s", err)
    rd.rank_error(rank).write_text(f"{err}\n")
    if rank == 0:
        print(f"error: {err}", file=sys.stderr, flush=True)
    return 2


def leave(code: int) -> None:
    """End a rank's process with `code` once everything it wrote is closed. A finished rank
    skips the interpreter's teardown of torch, transformers and datasets (~2 s per rank
    before torchrun sees the job end: benchmarks/NOTES.md); a refusing one exits the normal
    way, since torchrun stops the other ranks at the first exit and each must have logged
    its own refusal line by then."""
    if code != 0:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
