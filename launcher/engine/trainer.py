"""The training loop every recipe shares.

Read top to bottom: build parts (and, when the run directory has a checkpoint, restore them
from it), then `train()`: `train_step()`, log on log steps, evaluate and checkpoint on their
steps, stop with a checkpoint when preempted or early, and export the model. What a
checkpoint holds besides tensors is one `TrainState` (engine/train_state.py). No host sync
inside a step: the loss stays on the device until a log step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import (DeepSpeedPlugin, FullyShardedDataParallelPlugin,
                              InitProcessGroupKwargs, set_seed)

from rich.console import Console

from launcher import op_builds, sources, tasks
from launcher.checkpoint import compat, sharded, store
from launcher.engine import budget, data, packing, step_loss
from launcher.engine.evaluate import evaluate
from launcher.engine.hooks import StepHooks
from launcher.engine.metrics_log import MetricsLog
from launcher.engine.model import (build_model, build_tokenizer, fsdp_block, gathered_state,
                                   save_export, unwrapped)
from launcher.engine.optim import build_optimizer, build_scheduler
from launcher.engine.preempt import Preemption
from launcher.engine.report import LiveProgress, summary_table
from launcher.engine.train_state import Best, TrainState
from launcher.engine.window import LogWindow
from launcher.plan.build import Plan
from launcher.plan.render import MIXED_PRECISION
from launcher.plan.scan import balanced_weights, scan
from launcher.run_dir import RunDir

log = logging.getLogger("launcher.engine")
# Sharded weights are gathered inside forward: every rank must run the same forwards.
_SHARDED = ("zero3", "zero3_offload", "fsdp")


def _import_deepspeed() -> None:
    """DeepSpeed without mlflow: its autotuner imports mlflow when it is installed (1.1 s of
    DeepSpeed's 1.4 s import on every rank), for the autotuning runs the engine never starts.
    mlflow stays importable: it is hidden for DeepSpeed's import only (a run's MLflow tracker
    imports it on rank 0 when it starts)."""
    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        return
    sys.modules["mlflow"] = None  # Python's own "this cannot be imported"
    try:
        import deepspeed  # noqa: F401
    finally:
        if sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]


def build_accelerator(plan: Plan, plan_dir: Path) -> Accelerator:
    # The plan says (engine/device.py refused a cuda plan on a node without the GPUs).
    cpu = plan.device == "cpu"
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed guesses, and says so
    strategy, precision = plan.recipe.scale.strategy, plan.recipe.scale.precision
    if cpu and precision == "fp16":
        raise ValueError("scale.precision is fp16 but the plan trains on cpu; use bf16 or "
                         "fp32 on CPU")
    kwargs: dict[str, Any] = {}
    if strategy.startswith("zero"):
        # Here too, not only in `launcher run`: a requeued Slurm job starts here, on nodes
        # whose shared build cache the killed job may have left a lock in.
        op_builds.check(strategy)
        _import_deepspeed()
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=str(plan_dir / "deepspeed.json"),
                                                     zero3_init_flag=False)
    elif strategy == "fsdp":
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=[fsdp_block(plan.recipe.model)], reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT")
    timeout = timedelta(seconds=plan.recipe.scale.timeout_s)
    handlers = [InitProcessGroupKwargs(timeout=timeout, **({"backend": "gloo"} if cpu else {}))]
    # Accelerator(cpu=True) quietly turns a DeepSpeed plugin into plain DDP; DeepSpeed runs on
    # CPU through its own CPU accelerator (DS_ACCELERATOR=cpu) when accelerate is not told cpu.
    accelerator = Accelerator(cpu=cpu and "deepspeed_plugin" not in kwargs,
                              mixed_precision=MIXED_PRECISION[precision],
                              gradient_accumulation_steps=plan.grad_accum,
                              kwargs_handlers=handlers, **kwargs)
    if strategy == "fsdp" and cpu:
        _fsdp_on_cpu(accelerator, kwargs["fsdp_plugin"])
    if strategy.startswith("zero") and accelerator.distributed_type.name != "DEEPSPEED":
        raise RuntimeError(f"scale.strategy is {strategy} but accelerate set up "
                           f"{accelerator.distributed_type.name}, not DeepSpeed")
    if accelerator.num_processes != plan.world_size:
        # accelerate falls back to world size 1 silently when it misreads the environment.
        raise RuntimeError(f"the plan is for {plan.world_size} processes but this one sees "
                           f"{accelerator.num_processes}; launch it with plan/launch.sh")
    return accelerator


def _fsdp_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Give a CPU (gloo) run the FSDP set-up accelerate gives GPUs.

    accelerate 1.15 turns an FSDP plugin into FSDP only for GPU-like distributed types
    (state.py: MULTI_GPU, MULTI_NPU, ...); with cpu=True the state is MULTI_CPU and prepare()
    would wrap the model in DDP. So we do here what that branch does (the distributed type,
    the plugin's mixed precision, the plugin), right after the Accelerator is made and before
    anything is prepared (its __init__ reads the type only for fp16's grad scaler and fp8,
    which a CPU plan never has): prepare() then runs accelerate's own FSDP2 path
    (`_prepare_fsdp2`: fully_shard per family block, the embeddings, the root; the optimizer
    moved onto the DTensor shards), and backward, no_sync (set_requires_gradient_sync),
    DTensor-aware grad clipping and the full state dict of the export are accelerate's FSDP2
    code too: what the CPU tests run is what a GPU cluster runs. Sharding by hand instead
    would test our copy of accelerate's wrapping, not accelerate's.
    FSDP2's fully_shard itself runs on gloo (its collectives are all-gather and
    reduce-scatter on a CPU device mesh)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.NO:
        return  # one process: nothing to shard over (accelerate does the same on one GPU)
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise RuntimeError(f"scale.strategy is fsdp on cpu but accelerate set up "
                           f"{state.distributed_type.name}")
    state.distributed_type = DistributedType.FSDP
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    # As state.py does at the end of AcceleratorState.__init__: every later AcceleratorState()
    # copies PartialState's shared entries over its own.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _log_process_group(device: torch.device) -> None:
    """What the process group really got (scale.timeout_s goes through accelerate)."""
    if not torch.distributed.is_initialized():
        return
    try:
        backend = torch.distributed.group.WORLD._get_backend(device)
        timeout = f"{backend.options._timeout.total_seconds():.0f} s"
    except (AttributeError, RuntimeError):  # private API: the timeout is only informative
        timeout = "unknown"
    log.info("process group: %s, timeout %s", torch.distributed.get_backend(), timeout)


class Trainer:
    def __init__(self, plan: Plan, plan_dir: Path, hooks: Optional[StepHooks] = None):
        self.plan, self.rd = plan, RunDir(plan.run_dir)
        # What the loop calls besides training (engine/hooks.py): none for a plain run.
        self.hooks = hooks or StepHooks()
        # `launcher bench`: time the loop, and train nothing else (no eval, checkpoint, export).
        self.timing_only = plan.bench is not None
        self.task = tasks.for_recipe(plan.recipe)
        # The whole model on every rank from run.seed, before accelerate exists: once it has
        # a ZeRO-3 plugin, transformers builds under deepspeed.zero.Init, which draws each
        # shard's initial weights from another stream, so a fresh model would differ from the
        # one DDP or FSDP start from. Encoder models fit in host memory.
        set_seed(plan.recipe.run.seed)
        self.tokenizer = build_tokenizer(plan.recipe.model)
        plan = self.plan = _budget_steps(plan, self.task, self.tokenizer)
        model = build_model(plan.recipe.model, self.task)
        # Packed micro batches: the pooler reads each example's [CLS] wherever it landed.
        self.pooler = packing.install(model) if plan.recipe.data.packing else None
        if plan.recipe.scale.compile != "off":
            # In place: the module, its class and its state-dict keys stay what they were, so
            # checkpoints and exports do not know it was compiled.
            model.compile(mode=plan.recipe.scale.compile, dynamic=False)
        self.accelerator = build_accelerator(plan, plan_dir)
        self.hooks.setup(model, self.accelerator.device)  # the whole model, before prepare
        _log_process_group(self.accelerator.device)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.console = Console()
        self.class_weights = self._class_weights()
        # Then a different dropout stream per rank.
        set_seed(plan.recipe.run.seed + self.rank)
        optimizer = build_optimizer(model, plan.recipe.optim)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if plan.recipe.scale.strategy == "fsdp" and self.world > 1:
            self._check_sharded()
        # After prepare, on the torch optimizer that steps: ZeRO wraps it (and ZeRO-3 regroups
        # its parameters), and the schedule must set the learning rates of the groups it has.
        inner = self.optimizer.optimizer
        self.scheduler = build_scheduler(getattr(inner, "optimizer", inner), plan.recipe.optim,
                                         warmup_steps=plan.warmup_steps, total_steps=plan.total_steps)
        self.state = TrainState()  # step, data position, best eval: what a checkpoint restores
        self.examples_run = 0
        self.last_eval: Optional[dict] = None
        self.best_metric = plan.recipe.eval.metric or self.task.main_metric
        self.window: Optional[LogWindow] = None
        self.progress: Optional[LiveProgress] = None
        self.batches: Any = None  # the training stream, while train() runs
        self.fingerprint = compat.fingerprint(plan.recipe, self.task.labels)
        self.outcome: Optional[str] = None  # finished | preempted, for the trackers
        self.resumed_from = self._resume()
        if self.is_main:
            self.rd.preempted.unlink(missing_ok=True)
        self.metrics = (MetricsLog(plan, self.rd, after_step=self.state.step,
                                   run_ids=self.state.trackers or {}, warn=self._warn)
                        if self.is_main else None)
        self.trace = self._open_trace()
        self.preemption = Preemption(self.world)

    def _check_sharded(self) -> None:
        """FSDP must have sharded the model, not wrapped it in DDP: say how (rank logs)."""
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        units = [m for m in self.model.modules() if isinstance(m, FSDPModule)]
        params = list(self.model.parameters())
        if not units or not all(isinstance(p, DTensor) for p in params):
            raise RuntimeError(f"scale.strategy is fsdp but accelerate prepared "
                               f"{type(self.model).__name__} without sharding its parameters")
        local = sum(p.to_local().numel() for p in params)
        total = sum(p.numel() for p in params)
        log.info("fsdp: %d units, this rank holds %d of %d parameter elements", len(units),
                 local, total)

    def _resume(self) -> Optional[int]:
        """Restore everything from the newest intact checkpoint; its step, or None."""
        choice = store.choose(self.rd) if self.is_main else None
        found = [choice.path.name if choice and choice.path else None,
                 choice.warnings if choice else []]
        if self.world > 1:
            torch.distributed.broadcast_object_list(found, src=0)
        name, warnings = found
        for warning in warnings:
            log.warning("%s", warning)
            if self.is_main:
                self.console.print(f"[yellow]warning:[/] {warning}; falling back to an older "
                                   "checkpoint", highlight=False, soft_wrap=True)
        if self.is_main:
            _truncate_logs(self.rd, store.step_of(Path(name)) if name else 0)
        self.accelerator.wait_for_everyone()
        if name is None:
            if warnings:
                raise RuntimeError(f"no intact checkpoint left in {self.rd.checkpoints}; start "
                                   "over in a new run.output_dir")
            return None
        path = self.rd.checkpoints / name
        saved = store.read_state(path)
        problems = compat.incompatible(saved, self.fingerprint, self.plan.global_batch)
        problems += compat.order_problems(saved, self.plan.recipe)
        if problems:
            raise RuntimeError(f"{path} cannot go on under this plan: " + "; ".join(problems))
        state = TrainState.from_state_dict(saved)
        saved_world = state.world_size or self.world
        sharded.load(self.accelerator, path, model=self.model,
                     optimizer=self.optimizer.optimizer, saved_world=saved_world)
        if saved_world != self.world:
            set_seed(self.plan.recipe.run.seed + 1000 * state.step + self.rank)
        self.scheduler.load_state_dict(state.scheduler)
        if state.scaler and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state.scaler)
        self.state = state
        log.info("resumed from %s (step %d, epoch %d, row %d)", path, state.step, state.epoch,
                 state.position.row)
        if self.is_main:
            self.console.print(f"[bold]resumed[/] from {path.name}: step {state.step} of "
                               f"{self.plan.total_steps}, epoch {state.epoch}", highlight=False)
        return state.step

    def _warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)

    def _class_weights(self) -> Optional[torch.Tensor]:
        weights = self.plan.class_weights
        if weights is None and self.plan.recipe.task.class_weights == "balanced":
            # A hub dataset: the plan could not count its labels, so each rank counts them.
            d = self.plan.recipe.data
            src = sources.resolve(d.train, config=d.dataset_config, split=d.train_split)
            weights = balanced_weights(self.task, scan(self.task, src))
            log.info("class weights from data.train: %s", weights)
        if weights is None:
            return None
        return torch.tensor(weights, dtype=torch.float32, device=self.accelerator.device)

    def _open_trace(self):
        if not self.plan.recipe.run.trace_examples:
            return None
        self.rd.trace.mkdir(parents=True, exist_ok=True)
        # "step<TAB>id" lines: a resume drops the lines of steps after its checkpoint.
        return (self.rd.trace / f"rank{self.rank}.txt").open("a")

    def train(self) -> dict:
        """Step, log, maybe evaluate, maybe checkpoint, maybe stop; then export."""
        plan, state = self.plan, self.state
        batches = data.train_batches(plan, self.task, self.tokenizer, self.rank, self.world,
                                     start=state.position)
        self.window = LogWindow(self.accelerator.device)
        if self.is_main and state.log_window:  # the log window a checkpoint was cut in
            self.window.restore(state.log_window, max(1, plan.global_batch // plan.micro_batch))
        start, start_step = time.perf_counter(), state.step
        final_loss = float("nan")
        self.progress = (LiveProgress(self.console, plan.total_steps, start_step=state.step)
                         if self.is_main else None)
        self.model.train()
        # Closed when the loop ends, so its DataLoader workers stop there (kept open past
        # train(), they kept a rank from exiting with data.num_workers=2).
        with contextlib.closing(batches) as self.batches, \
                self.progress or contextlib.nullcontext():
            while state.step < plan.total_steps:
                self.train_step()
                last = state.step == plan.total_steps
                if state.step % plan.recipe.run.log_every == 0 or last:
                    final_loss = self._log(self.window, self.progress)
                    self.window.reset()
                preempted = not last and self.preemption.agreed()
                if self.timing_only:  # `launcher bench`: no eval, checkpoint or export
                    if preempted:
                        break
                    continue
                with self.window.paused():
                    improved, stop = self._maybe_evaluate(last)
                    self._maybe_checkpoint(last, improved, stop, preempted)
                if preempted:
                    self._stop_preempted(self.progress)
                    return {"preempted": True, "step": state.step}
                if stop:
                    if self.progress:
                        self.progress.note(f"early stop at step {state.step}: {self.best_metric} "
                                           f"has not improved for {state.evals_since_best} "
                                           "evaluations")
                    break
        train_time = time.perf_counter() - start
        self.hooks.finish(self.preemption.group)
        if self.timing_only:
            self.outcome = "finished"
            return {"step": state.step}
        stopped_early = state.step < plan.total_steps
        if stopped_early and state.best is not None and plan.recipe.checkpoint.keep_best:
            # What early stopping is for: export the best weights, not the last.
            sharded.load(self.accelerator, self.rd.checkpoint(state.best.step), model=self.model,
                         optimizer=self.optimizer.optimizer, saved_world=self.world)
        self._export()
        return self._summary(final_loss, train_time, state.step - start_step)

    def train_step(self) -> None:
        """One optimizer step: read its micro batches, forward and backward each, step the
        optimizer and the schedule, count it. The whole step is read before its first
        backward: its loss is divided by the step's labelled units over all ranks
        (step_loss.py)."""
        plan, state, window, hooks = self.plan, self.state, self.window, self.hooks
        device = self.accelerator.device
        micro_batches, real = [], []
        while True:
            hooks.data_begin()
            state.position, batch = next(self.batches)
            hooks.data_end(batch["inputs"])
            if self.trace:
                self.trace.write("".join(f"{state.step + 1}\t{i}\n" for i in batch["ids"]))
            micro_batches.append({k: v.to(device, non_blocking=True)
                                  for k, v in batch["inputs"].items()})
            real.append(not batch.get("pad", False))
            self.examples_run += len(batch["ids"])
            if real[-1]:
                window.add_micro_batch(packing.token_mask(batch["inputs"]),
                                       examples=len(batch["ids"]))
            # A token budget's step has as many micro batches as its tokens need.
            if batch.get("last", len(micro_batches) == plan.grad_accum):
                break
        window.add_step_loss(step_loss.train_step(
            self.accelerator, self.model, self.optimizer, self.task, micro_batches,
            self.class_weights, pooler=self.pooler, max_grad_norm=plan.recipe.optim.max_grad_norm,
            real=real))
        self.scheduler.step()
        state.step += 1
        window.steps += 1
        hooks.step_end(state.step)
        if self.progress:
            self.progress.advance(state.step)

    def _maybe_evaluate(self, last: bool) -> tuple[bool, bool]:
        """On eval steps and the last: (improved, stop early)."""
        every = self.plan.recipe.eval.every
        if not (last or (every and self.state.step % every == 0)):
            return False, False
        self.last_eval = self.evaluate(self.progress)
        return self._track_best(self.last_eval)

    def _maybe_checkpoint(self, last: bool, improved: bool, stop: bool, preempted: bool) -> None:
        c = self.plan.recipe.checkpoint
        keep_best = improved and c.keep_best
        if (last or stop or keep_best or preempted
                or (c.every and self.state.step % c.every == 0)):
            self._save_checkpoint(best=keep_best, reason="preempted" if preempted else "step")

    def _stop_preempted(self, progress) -> None:
        """Every rank saved this step; say so where the executor (and a person) will look."""
        signal_name = self.preemption.signal
        step = self.state.step
        self.outcome = "preempted"
        if self.is_main:
            store.write_atomic(self.rd.preempted, json.dumps(
                {"step": step, "signal": signal_name,
                 "checkpoint": self.rd.checkpoint(step).name}) + "\n")
            if progress:
                progress.note(f"preempted ({signal_name}) at step {step}: checkpoint "
                              f"saved; it resumes from here")
        log.info("preempted by %s at step %d; checkpoint saved", signal_name, step)

    def _track_best(self, metrics: Optional[dict]) -> tuple[bool, bool]:
        """(improved, stop early), decided on rank 0; every rank gets the same best."""
        state = self.state
        decision = [False, False, state.best, state.evals_since_best]
        if self.is_main and metrics is not None:
            e = self.plan.recipe.eval
            value = metrics[self.best_metric]
            sign = -1.0 if self.best_metric == "loss" else 1.0
            if state.best is None or sign * (value - state.best.value) > e.early_stopping_min_delta:
                state.best, state.evals_since_best = Best(state.step, self.best_metric, value), 0
                decision[0] = True
            else:
                state.evals_since_best += 1
            patience = e.early_stopping_patience
            decision[1] = patience is not None and state.evals_since_best >= patience
            decision[2:] = [state.best, state.evals_since_best]
        if self.world > 1:
            torch.distributed.broadcast_object_list(decision, src=0)
        improved, stop, state.best, state.evals_since_best = decision
        return improved, stop

    def _log(self, window: LogWindow, progress) -> float:
        t = window.totals(self.accelerator)
        record = {
            "step": self.state.step, "epoch": self.state.epoch, "loss": t["loss"],
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": t["examples"] / t["seconds"],
            "tokens_per_s": t["tokens_per_s"], "padded_tokens_per_s": t["padded_tokens_per_s"],
        }
        if self.metrics:
            self.metrics.train(record)
            log.info("step %d loss %.4f lr %.3g samples/s %.1f", record["step"],
                     record["loss"], record["lr"], record["samples_per_s"])
        if progress:
            progress.show(loss=record["loss"], samples_per_s=record["samples_per_s"])
        return record["loss"]

    def evaluate(self, progress) -> Optional[dict]:
        lockstep = self.plan.recipe.scale.strategy in _SHARDED
        step = self.state.step
        metrics = evaluate(
            plan=self.plan, task=self.task, tokenizer=self.tokenizer,
            model=self.model if lockstep else unwrapped(self.model, self.accelerator,
                                                         self.plan.recipe.scale.strategy),
            device=self.accelerator.device, autocast=self.accelerator.autocast, rank=self.rank,
            world=self.world, lockstep=lockstep, step=step,
            out_dir=self.rd.eval / f"step-{step:07d}")
        if metrics is None:
            return None
        head = self.task.headline(metrics)
        self.metrics.eval(step, metrics, self.rd.eval / f"step-{step:07d}")
        text = ", ".join(f"{k} {v:.4f}" for k, v in head.items())
        log.info("eval step %d %s", step, text)
        if progress:
            progress.note(f"eval @ step {step}: {text} ({metrics['examples']} examples)")
        return metrics

    def _save_checkpoint(self, best: bool = False, reason: str = "step") -> None:
        # The loop's state as it is, with what only a checkpoint records.
        scaler = self.accelerator.scaler
        position = self.state.position
        if data.needs_join(position):
            # A sharded stream: each rank knows where its own readers stand; the checkpoint
            # records them all, so a resume on any split goes on from each reader's window.
            shared: list = [position.streams]
            if self.world > 1:
                shared = [None] * self.world
                torch.distributed.all_gather_object(shared, position.streams,
                                                    group=self.preemption.group)
            position = data.joined_position(position, shared)
        state = dataclasses.replace(
            self.state, position=position, scheduler=self.scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            log_window=self.window.partial(self.accelerator) if self.window else None,
            trackers=self.metrics.run_ids() if self.metrics else None,
            data_order=compat.data_order(self.plan.recipe), fingerprint=self.fingerprint,
            world_size=self.world, global_batch=self.plan.global_batch, reason=reason,
            saved_at=time.time())
        began = time.perf_counter()
        path = sharded.save(self.accelerator, self.rd, step=state.step,
                            state=state.state_dict(), model=self.model,
                            optimizer=self.optimizer.optimizer,
                            keep_last=self.plan.recipe.checkpoint.keep_last, best=best,
                            group=self.preemption.group, after_write=self._after_write)
        seconds = time.perf_counter() - began
        log.info("checkpoint %s%s in %.1f s", path, " (best)" if best else "", seconds)
        grace = self.plan.recipe.checkpoint.grace_s
        if seconds > grace / 2:
            log.warning("saving took %.0f s, more than half of checkpoint.grace_s (%d s): a "
                        "save after a preemption signal may be cut off", seconds, grace)

    def _after_write(self) -> None:
        self.hooks.after_save(self.state.step)

    def _export(self) -> None:
        strategy = self.plan.recipe.scale.strategy
        model = unwrapped(self.model, self.accelerator, strategy)
        state = gathered_state(self.model, model, self.accelerator, strategy)
        if self.is_main:
            save_export(model, state, self.tokenizer, self.rd.final, strategy)
        self.accelerator.wait_for_everyone()

    def _examples_run(self) -> float:
        """Examples trained in this launch over all ranks (a collective)."""
        local = torch.tensor(float(self.examples_run), dtype=torch.float64,
                             device=self.accelerator.device)
        return float(self.accelerator.reduce(local, reduction="sum"))

    def _summary(self, final_loss: float, train_time: float, steps_run: int) -> dict:
        summary = {
            "run_dir": str(self.rd.root), "steps": self.state.step, "world_size": self.world,
            "resumed_from": self.resumed_from,
            "final_loss": final_loss, "wall_time_s": train_time,
            "samples_per_s": self._examples_run() / max(train_time, 1e-9),
            "eval": ({"examples": self.last_eval["examples"], "loss": self.last_eval["loss"],
                      **self.task.headline(self.last_eval)} if self.last_eval else {}),
        }
        if self.state.best is not None:
            summary["best"] = dataclasses.asdict(self.state.best)
        if self.is_main:
            self.rd.summary.write_text(json.dumps(summary, indent=2) + "\n")
            self.metrics.artifact(self.rd.summary)
            self.outcome = "finished"
            if self.last_eval:
                self.console.print(self.task.table(self.last_eval))
            self.console.print(summary_table(summary))
        return summary

    def close(self) -> None:
        self.preemption.close()
        if self.metrics:
            self.metrics.close(self.outcome or "failed")
        if self.trace:
            self.trace.close()


def _budget_steps(plan: Plan, task, tokenizer) -> Plan:
    """Under a token budget the plan's steps per epoch are an estimate (from a scan of the
    text, before any tokenizer ran); with run.epochs the engine counts the real steps of
    every epoch from the examples' token lengths (the same on every rank), so the schedule
    ends where the last epoch does."""
    if not plan.tokens_per_step:
        return plan
    d = plan.recipe.data
    prepared = data.prepare(d.train, d.train_split, plan, task)
    lengths = budget.lengths(prepared, task, tokenizer)
    epochs = plan.recipe.run.epochs
    counts = [budget.epoch_steps(lengths[data.epoch_order(len(lengths), plan.recipe.run.seed,
                                                          e, d.shuffle)], plan.tokens_per_step)
              for e in range(epochs or 1)]
    log.info("token budget: %s steps in epoch(s) 0..%d (the plan estimated %s an epoch)",
             counts, len(counts) - 1, plan.steps_per_epoch)
    if epochs is None:
        return plan
    total = sum(counts)
    return dataclasses.replace(plan, steps_per_epoch=counts[0], total_steps=total,
                               warmup_steps=math.ceil(plan.recipe.optim.warmup_ratio * total),
                               steps_estimated=False)


def _truncate_logs(rd: RunDir, step: int) -> None:
    """Drop what was logged after `step`: those steps are trained again after a resume."""
    def keep(path: Path, line_step) -> None:
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and line_step(line) <= step]
        if len(kept) != len(lines):
            store.write_atomic(path, "".join(kept))

    keep(rd.metrics, lambda line: json.loads(line)["step"])
    for trace in rd.trace.glob("rank*.txt") if rd.trace.is_dir() else []:
        keep(trace, lambda line: int(line.split("\t", 1)[0]))
