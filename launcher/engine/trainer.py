"""The training loop every recipe shares.

Read top to bottom: build parts, then `train()` steps, logs on log steps, evaluates and
checkpoints on their steps, and exports the model. No host sync inside a step: the loss stays
on the device until a log step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import (DeepSpeedPlugin, FullyShardedDataParallelPlugin,
                              InitProcessGroupKwargs, set_seed)

from rich.console import Console

from launcher.engine import checkpoint, data
from launcher.engine.evaluate import classification_metrics, confusion
from launcher.engine.metrics_log import MetricsLog
from launcher.engine.model import build_model, build_tokenizer
from launcher.engine.optim import build_optimizer, build_scheduler
from launcher.engine.report import LiveProgress, summary_table
from launcher.engine.window import LogWindow
from launcher.plan.build import Plan
from launcher.run_dir import RunDir

log = logging.getLogger("launcher.engine")
_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


def build_accelerator(plan: Plan, plan_dir: Path) -> Accelerator:
    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed guesses, and says so
    strategy, precision = plan.recipe.scale.strategy, plan.recipe.scale.precision
    if cpu and precision == "fp16":
        raise ValueError("scale.precision is fp16 but there is no GPU here; use bf16 or fp32 "
                         "on CPU")
    kwargs: dict[str, Any] = {}
    if strategy.startswith("zero"):
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=str(plan_dir / "deepspeed.json"))
    elif strategy == "fsdp":
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["BertLayer"], reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT")
    handlers = [InitProcessGroupKwargs(backend="gloo")] if cpu else []
    accelerator = Accelerator(cpu=cpu, mixed_precision=_PRECISION[precision],
                              gradient_accumulation_steps=plan.grad_accum,
                              kwargs_handlers=handlers, **kwargs)
    if accelerator.num_processes != plan.world_size:
        # accelerate falls back to world size 1 silently when it misreads the environment.
        raise RuntimeError(f"the plan is for {plan.world_size} processes but this one sees "
                           f"{accelerator.num_processes}; launch it with plan/launch.sh")
    return accelerator


class Trainer:
    def __init__(self, plan: Plan, plan_dir: Path):
        self.plan, self.rd = plan, RunDir(plan.run_dir)
        self.accelerator = build_accelerator(plan, plan_dir)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.console = Console()
        # Same initial weights on every rank; then a different dropout stream per rank.
        set_seed(plan.recipe.run.seed)
        self.tokenizer = build_tokenizer(plan.recipe.model)
        model = build_model(plan.recipe.model, plan.recipe.task)
        set_seed(plan.recipe.run.seed + self.rank)
        optimizer = build_optimizer(model, plan.recipe.optim)
        self.scheduler = build_scheduler(optimizer, plan.recipe.optim,
                                         warmup_steps=plan.warmup_steps, total_steps=plan.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.metrics = MetricsLog(self.rd.metrics, self.rd.tensorboard) if self.is_main else None
        self.trace = self._open_trace()
        self.step, self.epoch = 0, 0
        self.last_eval: Optional[dict] = None

    def _open_trace(self):
        if not self.plan.recipe.run.trace_examples:
            return None
        self.rd.trace.mkdir(parents=True, exist_ok=True)
        return (self.rd.trace / f"rank{self.rank}.txt").open("a")

    def train(self) -> dict:
        plan, acc = self.plan, self.accelerator
        batches = data.train_batches(plan, self.tokenizer, self.rank, self.world)
        device = acc.device
        window = LogWindow(device)
        start = time.perf_counter()
        final_loss = float("nan")
        progress = LiveProgress(self.console, plan.total_steps) if self.is_main else None
        every_eval, every_ckpt = plan.recipe.eval.every, plan.recipe.checkpoint.every
        self.model.train()
        with progress or contextlib.nullcontext():
            while self.step < plan.total_steps:
                for _ in range(plan.grad_accum):
                    self.epoch, batch = next(batches)
                    if self.trace:
                        self.trace.write("".join(f"{i}\n" for i in batch["ids"]))
                    inputs = {k: v.to(device, non_blocking=True) for k, v in batch["inputs"].items()}
                    with acc.accumulate(self.model):
                        loss = self.model(**inputs).loss
                        acc.backward(loss)
                        if acc.sync_gradients and plan.recipe.optim.max_grad_norm > 0:
                            acc.clip_grad_norm_(self.model.parameters(), plan.recipe.optim.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    window.add_micro_batch(loss, batch["inputs"]["attention_mask"])
                self.scheduler.step()
                self.step += 1
                window.steps += 1
                if progress:
                    progress.advance(self.step)
                last = self.step == plan.total_steps
                if self.step % plan.recipe.run.log_every == 0 or last:
                    final_loss = self._log(window, progress)
                    window.reset()
                with window.paused():
                    if last or (every_eval and self.step % every_eval == 0):
                        self.last_eval = self.evaluate(progress)
                    if last or (every_ckpt and self.step % every_ckpt == 0):
                        self._save_checkpoint()
        train_time = time.perf_counter() - start
        self._export()
        return self._summary(final_loss, train_time)

    def _log(self, window: LogWindow, progress) -> float:
        t = window.totals(self.accelerator)
        record = {
            "step": self.step, "epoch": self.epoch, "loss": t["loss"],
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": t["steps"] * self.plan.global_batch / t["seconds"],
            "tokens_per_s": t["tokens_per_s"], "padded_tokens_per_s": t["padded_tokens_per_s"],
        }
        if self.metrics:
            self.metrics.train(record)
            log.info("step %d loss %.4f lr %.3g samples/s %.1f", self.step, record["loss"],
                     record["lr"], record["samples_per_s"])
        if progress:
            progress.show(loss=record["loss"], samples_per_s=record["samples_per_s"])
        return record["loss"]

    def evaluate(self, progress) -> Optional[dict]:
        batches = data.eval_batches(self.plan, self.tokenizer, self.rank, self.world)
        if batches is None:
            return None
        labels = self.plan.recipe.task.labels
        model = self.accelerator.unwrap_model(self.model)
        counts, loss_sum = confusion(model, batches, len(labels), self.accelerator.device,
                                     self.accelerator.autocast)
        flat = torch.cat([counts.flatten().double(), loss_sum.view(1)])
        flat = self.accelerator.reduce(flat, reduction="sum")
        matrix = flat[:-1].round().long().view(len(labels), len(labels)).cpu()
        metrics = {"step": self.step, **classification_metrics(matrix, flat[-1].item(), labels)}
        if self.is_main:
            out = self.rd.eval / f"step-{self.step:07d}"
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            self.metrics.eval({k: metrics[k] for k in ("step", "loss", "accuracy", "macro_f1")})
            log.info("eval step %d accuracy %.4f macro_f1 %.4f", self.step, metrics["accuracy"],
                     metrics["macro_f1"])
            progress.note(f"eval @ step {self.step}: accuracy {metrics['accuracy']:.4f}, "
                          f"macro-F1 {metrics['macro_f1']:.4f} ({metrics['examples']} examples)")
        return metrics

    def _save_checkpoint(self) -> None:
        state = {"step": self.step, "epoch": self.epoch, "world_size": self.world,
                 "global_batch": self.plan.global_batch}
        path = checkpoint.save(self.accelerator, self.rd, self.step, state,
                               self.plan.recipe.checkpoint.keep_last)
        log.info("checkpoint %s", path)

    def _export(self) -> None:
        state = self.accelerator.get_state_dict(self.model)
        if self.is_main:
            model = self.accelerator.unwrap_model(self.model)
            model.save_pretrained(self.rd.final, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(self.rd.final)
        self.accelerator.wait_for_everyone()

    def _summary(self, final_loss: float, train_time: float) -> dict:
        summary = {
            "run_dir": str(self.rd.root), "steps": self.step, "world_size": self.world,
            "final_loss": final_loss, "wall_time_s": train_time,
            "samples_per_s": self.step * self.plan.global_batch / train_time,
            "eval": {k: v for k, v in (self.last_eval or {}).items()
                     if k in ("accuracy", "macro_f1", "examples", "loss")},
        }
        if self.is_main:
            self.rd.summary.write_text(json.dumps(summary, indent=2) + "\n")
            self.console.print(summary_table(summary))
        return summary

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
        if self.trace:
            self.trace.close()
