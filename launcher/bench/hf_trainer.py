"""The bench's baseline: HF Trainer on the same model, data and batch, under the same torchrun.

    torchrun --standalone --nproc-per-node P -m launcher.bench.hf_trainer SPEC.json

trains with `transformers.Trainer` for warmup_steps + steps optimizer steps and rank 0 writes one
result (launcher.engine.step_timer.RESULT_FIELDS) to SPEC["result"]; if anything raises, rank 0 writes the
result with "error" set and the process exits non-zero.

settings "best" is Trainer tuned as a careful user would (mixed precision, dynamic padding to a
multiple of 8, length-grouped batches, fused AdamW on CUDA, two loader workers, no DDP
unused-parameter search); "tutorial" is the documented default recipe (every row padded to
max_length, default optimizer and collator).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, PreTrainedTokenizerBase, PrinterCallback,
                          Trainer, TrainerCallback, TrainingArguments, set_seed)

from launcher.engine.flops import flop_shape
from launcher.engine.step_timer import RESULT_FIELDS, cpu_name, write_result


class StepClock(TrainerCallback):
    """Times optimizer steps. Trainer fetches a step's micro batches before on_step_begin, so
    the gap from the previous step's end to on_step_begin is the wait for data."""

    def __init__(self, warmup_steps: int, cuda: bool) -> None:
        self.warmup_steps = warmup_steps
        self.cuda = cuda
        self.step_times_s: list[float] = []
        self.data_wait_s: list[float] = []
        self.last_end = self.warmup_end = self.begin = 0.0

    def _now(self) -> float:
        if self.cuda:
            # Kernels run asynchronously: without this a step would end at its last launch.
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        # The reference for the first timed step when there is no warm-up.
        self.last_end = self.warmup_end = self._now()

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        now = self._now()
        if state.global_step > self.warmup_steps:
            self.step_times_s.append(now - self.last_end)
            self.data_wait_s.append(self.begin - self.last_end)
        elif state.global_step == self.warmup_steps:
            self.warmup_end = now
        self.last_end = now

    @property
    def wall_s(self) -> float:
        return self.last_end - self.warmup_end if self.step_times_s else 0.0


class CountingTrainer(Trainer):
    """Counts the rows and tokens of the timed steps where the model receives them: the
    collator may run in loader workers, out of this process's reach."""

    def __init__(self, *args: Any, warmup_steps: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warmup_steps = warmup_steps
        self.shape_counts = [0, 0, 0]  # rows, padded tokens, sum of squared padded lengths
        # Real lengths stay on the training device so that counting never waits for the GPU.
        self.real_counts = torch.zeros(2, dtype=torch.int64, device=self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # global_step is the number of finished steps: this micro batch belongs to step + 1.
        if self.state.global_step >= self.warmup_steps:
            mask = inputs["attention_mask"]
            rows, width = mask.shape
            lengths = mask.sum(dim=1, dtype=torch.int64)
            self.real_counts += torch.stack([lengths.sum(), (lengths * lengths).sum()])
            for i, n in enumerate((rows, rows * width, rows * width * width)):
                self.shape_counts[i] += n
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def summed_counts(self) -> dict[str, int]:
        """The counts summed over ranks (a collective: every rank calls it)."""
        counts = torch.cat([torch.tensor(self.shape_counts, device=self.real_counts.device),
                            self.real_counts])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        rows, padded, padded_sq, real, real_sq = counts.tolist()
        return dict(samples=rows, padded_tokens=padded, sum_sq_padded=padded_sq,
                    real_tokens=real, sum_sq_real=real_sq)


def tokenize(spec: dict, tokenizer: PreTrainedTokenizerBase):
    """The rows the run needs (twice over, for Trainer's sampler to draw from), tokenized
    once, as an in-memory datasets.Dataset: no cache files for ranks to race on. Read
    through launcher's own sources, so a local JSONL/CSV/parquet file or a hub dataset."""
    import itertools

    import datasets

    from launcher import sources

    world = int(os.environ.get("WORLD_SIZE", "1"))
    needed = 2 * (spec["warmup_steps"] + spec["steps"]) * spec["micro_batch"] * \
        spec["grad_accum"] * world
    src = sources.resolve(spec["train_file"], config=spec.get("dataset_config"),
                          split=spec.get("split", "train"))
    stream = sources.open_stream(src, streaming=True)
    text, pair, label = spec["text_column"], spec.get("text_pair_column"), spec["label_column"]
    rows = [r for r in itertools.islice(sources.iter_rows(stream), needed * 2)
            if r.get(text)][:needed]
    encoded = tokenizer([r[text] for r in rows], [r[pair] for r in rows] if pair else None,
                        truncation=True, max_length=spec["max_length"],
                        padding="max_length" if spec["settings"] == "tutorial" else False)
    names = spec["labels"]
    labels = [names.index(r[label]) if isinstance(r[label], str) else int(r[label])
              for r in rows]
    return datasets.Dataset.from_dict({**encoded, "labels": labels})


def training_args(spec: dict, cuda: bool) -> TrainingArguments:
    precision, best = spec["precision"], spec["settings"] == "best"
    if precision == "fp16" and not cuda:
        raise ValueError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    kwargs: dict[str, Any] = dict(
        output_dir=spec["work_dir"], max_steps=spec["warmup_steps"] + spec["steps"],
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=spec["grad_accum"], learning_rate=spec["lr"],
        seed=spec["seed"], bf16=precision == "bf16", fp16=precision == "fp16",
        use_cpu=not cuda, save_strategy="no", eval_strategy="no", logging_strategy="no",
        report_to=[], disable_tqdm=True, log_level="error", log_level_replica="error")
    if best:
        kwargs.update(optim="adamw_torch_fused" if cuda else "adamw_torch",
                      dataloader_num_workers=2, dataloader_pin_memory=cuda,
                      # Trainer's default for a PreTrainedModel is True: a needless extra
                      # autograd-graph walk per step for a classifier that uses every weight.
                      ddp_find_unused_parameters=False)
        # Newer transformers replaced the boolean with a choice of sampler.
        if "group_by_length" in {f.name for f in dataclasses.fields(TrainingArguments)}:
            kwargs["group_by_length"] = True
        else:
            kwargs["train_sampling_strategy"] = "group_by_length"
    return TrainingArguments(**kwargs)


def build_model(spec: dict) -> torch.nn.Module:
    set_seed(spec["seed"])
    num_labels = len(spec["labels"])
    if spec["pretrained"]:
        return AutoModelForSequenceClassification.from_pretrained(spec["model_dir"],
                                                                  num_labels=num_labels)
    config = AutoConfig.from_pretrained(spec["model_dir"], num_labels=num_labels)
    return AutoModelForSequenceClassification.from_config(config)


def device_name(cuda: bool) -> str:
    return torch.cuda.get_device_name() if cuda else cpu_name()


def base_result(spec: dict, world_size: int, cuda: bool) -> dict:
    """Every field, the measured ones still null: an error result has the same shape."""
    result: dict[str, Any] = dict.fromkeys(RESULT_FIELDS)
    result.update(
        name=spec["name"], runner="hf-trainer", strategy="ddp", precision=spec["precision"],
        world_size=world_size, micro_batch=spec["micro_batch"], grad_accum=spec["grad_accum"],
        global_batch=spec["micro_batch"] * spec["grad_accum"] * world_size,
        max_length=spec["max_length"], warmup_steps=spec["warmup_steps"], steps=spec["steps"],
        padding=("dynamic, multiple of 8, length-grouped" if spec["settings"] == "best"
                 else f"max_length ({spec['max_length']})"),
        device=device_name(cuda))
    return result


def run(spec: dict, result: dict, cuda: bool) -> None:
    """Train and fill in the measured fields of `result`."""
    args = training_args(spec, cuda)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if args.world_size != world_size:
        raise RuntimeError(f"Trainer sees world size {args.world_size}, torchrun started "
                           f"{world_size}")
    tokenizer = AutoTokenizer.from_pretrained(spec.get("tokenizer") or spec["model_dir"])
    train = tokenize(spec, tokenizer)
    model = build_model(spec)
    shape = flop_shape(model)
    clock = StepClock(spec["warmup_steps"], cuda)
    trainer = CountingTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer,
        data_collator=(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
                       if spec["settings"] == "best" else None),
        callbacks=[clock], warmup_steps=spec["warmup_steps"])
    # With progress bars off Trainer prints its final metrics instead; the result has them.
    trainer.remove_callback(PrinterCallback)
    trainer.train()

    c = trainer.summed_counts()
    peaks = None
    if cuda:
        peaks = torch.tensor([torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()],
                             device=args.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(peaks, op=torch.distributed.ReduceOp.MAX)
        peaks = peaks.tolist()
    result.update(
        step_times_s=clock.step_times_s, data_wait_s=clock.data_wait_s, wall_s=clock.wall_s,
        samples=c["samples"], real_tokens=c["real_tokens"], padded_tokens=c["padded_tokens"],
        model_flops=shape.train_flops(c["real_tokens"], c["sum_sq_real"], c["samples"]),
        hardware_flops=shape.train_flops(c["padded_tokens"], c["sum_sq_padded"], c["samples"]),
        peak_memory_bytes=peaks[0] if peaks else None,
        peak_reserved_bytes=peaks[1] if peaks else None)
    # The process group stays up (accelerate leaves it so): the rank leaves by os._exit, and
    # taking gloo down here, with the DDP model freed after it, can hang the rank in teardown
    # (launcher/engine/main.py, _FINISHED). No destructor runs, so NCCL has nothing to warn of.


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: torchrun ... -m launcher.bench.hf_trainer SPEC_JSON", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = json.loads(Path(argv[0]).read_text())
    cuda = torch.cuda.is_available()
    rank = int(os.environ.get("RANK", "0"))
    result = base_result(spec, int(os.environ.get("WORLD_SIZE", "1")), cuda)
    try:
        run(spec, result, cuda)
    except Exception as err:
        lines = str(err).strip().splitlines()
        result["error"] = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        if rank == 0:
            write_result(Path(spec["result"]), result)
        raise  # the traceback goes to the rank's stderr and the exit status is 1
    if rank == 0:
        write_result(Path(spec["result"]), result)
    return 0


if __name__ == "__main__":
    # As the engine's ranks leave: a finished rank skips the interpreter's teardown, where a
    # thread still alive in torch or tokenizers sometimes aborts it ("terminate called
    # without an active exception", seen at 2 ranks on CPU) after its result is written.
    from launcher.engine.main import leave

    leave(main(sys.argv[1:]))
