"""What a recipe can say: one frozen dataclass per concern, one docstring per field.

A recipe file builds `recipe = Recipe(...)` from these. Values here are what the user wants;
everything derived from them (world size, accumulation, steps) is computed once, in the plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, Union

from launcher.recipe.section import SECTION_PATHS, option, section

# Literal[...] of a tuple is the Literal of its items: one list serves types, errors and tests.
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "zero3_offload", "fsdp")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
PRECISIONS = ("bf16", "fp16", "fp32")
TASK_TYPES = ("sequence_classification", "multi_label_classification", "token_classification",
              "question_answering")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
TRACKERS = ("tensorboard", "mlflow", "wandb")
DEVICES = ("auto", "cuda", "cpu")


@section
class ModelConfig:
    name: str = option(doc="HF hub name (bert-large-uncased) or a local model directory")
    tokenizer: Optional[str] = option(None, "tokenizer name or directory; defaults to model.name")
    pretrained: bool = option(True, "load pretrained weights; False builds the model from its "
                                    "config with random weights (tiny test models)")
    config_overrides: dict = option(doc="values set on the model config before building it, "
                                        "e.g. {'num_hidden_layers': 2}", factory=dict)
    dropout: Optional[float] = option(None, "hidden and attention dropout; None keeps the model's")
    classifier_dropout: Optional[float] = option(None, "dropout before the task head")
    freeze_embeddings: bool = option(False, "do not train the embedding layer")
    freeze_layers: int = option(0, "do not train the first N encoder layers")
    freeze_encoder: bool = option(False, "train only the task head (embeddings and every "
                                         "encoder layer frozen)")
    head_hidden: Optional[int] = option(None, "classification: a hidden layer of this width "
                                              "(GELU, then head_dropout) before the output layer")
    head_dropout: Optional[float] = option(None, "dropout after head_hidden's layer; defaults "
                                                 "to classifier_dropout or the model's dropout")


@section
class TaskConfig:
    type: Literal[TASK_TYPES] = option(
        "sequence_classification", "what the model learns; sets the head, the loss, the data "
                                   "columns read and the metrics")
    labels: tuple[str, ...] = option((), "label names in id order (token_classification: the "
                                         "tag set, 'O' and 'B-'/'I-' tags); integer labels in "
                                         "the data index this list, string labels must be in "
                                         "it; not used by question_answering")
    class_weights: Union[Literal["balanced"], tuple[float, ...], None] = option(
        None, "cross-entropy weight per label, or 'balanced' to weight each label by "
              "examples / (labels x its count) in data.train")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing (single-label tasks)")
    threshold: float = option(0.5, "multi_label_classification: a label is predicted when its "
                                   "sigmoid passes this")
    max_answer_length: int = option(30, "question_answering: longest answer, in tokens")
    null_threshold: float = option(0.0, "question_answering: answer 'no answer' unless the best "
                                        "span's score beats the null score by more than this")


@section
class DataConfig:
    train: str = option(doc="HF dataset name (ag_news) or a local .jsonl/.json/.csv/.parquet file")
    eval: Optional[str] = option(None, "eval file or dataset name; None uses data.train's "
                                       "eval_split when train is a hub dataset")
    dataset_config: Optional[str] = option(None, "HF dataset configuration name")
    train_split: str = option("train", "split read from a hub dataset for training")
    eval_split: str = option("test", "split read from a hub dataset for evaluation")
    text_column: Optional[str] = option(None, "column holding the input text; default by "
                                              "task: text, tokens (token_classification), "
                                              "question (question_answering)")
    text_pair_column: Optional[str] = option(None, "second text column for sentence pairs (NLI: "
                                                   "premise in text_column, hypothesis here); "
                                                   "question_answering: context (default)")
    label_column: Optional[str] = option(None, "column holding the label; default by task: "
                                               "label, labels (multi-label: a list of names or "
                                               "ids), ner_tags, answers (SQuAD format)")
    id_column: Optional[str] = option(None, "column identifying an example (traces, errors)")
    max_length: int = option(128, "truncate inputs to this many tokens")
    doc_stride: Optional[int] = option(None, "question_answering: tokens shared by consecutive "
                                             "windows of a long context; default max_length // 4")
    pad_to_multiple_of: int = option(8, "pad each batch up to a multiple of this (tensor cores)")
    streaming: bool = option(False, "read data as a stream instead of preparing "
                                    "the split once as memory-mapped Arrow that each rank "
                                    "reads by index; for splits too big to prepare")
    shuffle: bool = option(True, "train each epoch in a new order, a permutation seeded by "
                                 "(run.seed, epoch); a stream: its shards' order, then each "
                                 "window of data.shuffle_window rows; false: file order")
    shuffle_window: int = option(10_000, "data.streaming with data.shuffle: rows per window "
                                         "whose order is permuted (memory: one window per "
                                         "DataLoader worker)")
    train_examples: Optional[int] = option(None, "size of the training set, when run.epochs is "
                                                 "used with a hub dataset; local files are counted")
    num_workers: int = option(1, "DataLoader worker processes per rank for reading/tokenizing")
    packing: bool = option(False, "sequence classification: pack each micro batch's examples "
                                  "into rows of max_length tokens, each attending only to "
                                  "itself; far fewer pad tokens, the same loss")


@section
class ScaleConfig:
    ALIASES = {"bf16": ("precision", "bf16"), "fp16": ("precision", "fp16")}

    nodes: int = option(1, "machines")
    procs_per_node: int = option(1, "processes (GPUs) per machine")
    strategy: Literal[STRATEGIES] = option(
        "ddp", "how model states are replicated or sharded across ranks")
    precision: Literal[PRECISIONS] = option("bf16", "training precision")
    micro_batch: int = option(8, "examples per device per forward/backward")
    grad_accum: Optional[int] = option(None, "micro batches per optimizer step; derived from "
                                             "global_batch when that is set, else 1")
    global_batch: Optional[int] = option(None, "examples per optimizer step over all ranks")
    tokens_per_step: Optional[int] = option(
        None, "token budget instead of global_batch: each optimizer step takes examples in "
              "the epoch's order until their real (unpadded) tokens over all ranks would pass "
              "this; prepared data only, not ZeRO")
    micro_tokens: Optional[int] = option(
        None, "with tokens_per_step: most tokens of one rank's micro batch, padding counted "
              "(data.packing: packed rows x max_length); default micro_batch x max_length")
    compile: Literal[COMPILE_MODES] = option(
        "off", "torch.compile the model (ddp): 'default', 'reduce-overhead' (CUDA graphs: "
               "fewer kernel launches, the cost that dominates small batches) or "
               "'max-autotune'")
    device: Literal[DEVICES] = option(
        "auto", "what the ranks train on: 'cuda' (one GPU per process; a node without enough "
                "GPUs refuses to start) or 'cpu' (gloo); 'auto' is cuda for Slurm jobs and "
                "multi-node plans, else cuda when this machine has a GPU and cpu otherwise")
    timeout_s: int = option(1800, "seconds a collective may wait for the other ranks before the "
                                  "job fails (the process group's timeout): a dead or stuck "
                                  "node ends the job instead of hanging it")
    gpu: Optional[str] = option(None, "the GPU the job gets, e.g. 'H100-80GB' or 'A100-40GB': "
                                      "a recipe whose model states will not fit is warned "
                                      "about before launch (see `launcher plan-memory`)")


@section
class OptimConfig:
    lr: float = option(2e-5, "peak AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    betas: tuple[float, ...] = option((0.9, 0.999), "AdamW betas")
    eps: float = option(1e-8, "AdamW epsilon")
    warmup_ratio: float = option(0.1, "share of steps with linear warmup")
    scheduler: Literal[SCHEDULES] = option(
        "linear", "learning-rate schedule after warmup (constant is constant_with_warmup)")
    max_grad_norm: float = option(1.0, "clip gradients to this norm; 0 disables")


@section
class CheckpointConfig:
    every: int = option(500, "save a checkpoint every N optimizer steps; 0 saves only at the end")
    keep_last: int = option(2, "checkpoints kept; older ones are deleted")
    keep_best: bool = option(True, "also keep the checkpoint with the best eval.metric, saved "
                                   "when an evaluation improves it (RUN_DIR/checkpoints/BEST)")
    grace_s: int = option(120, "seconds between the preemption signal and the kill: Slurm is "
                               "asked to send SIGUSR1 this long before a time limit, and a "
                               "save that takes more than half of it is warned about")


@section
class EvalConfig:
    every: int = option(0, "evaluate every N optimizer steps; 0 evaluates only at the end")
    micro_batch: Optional[int] = option(None, "eval examples per device; defaults to "
                                              "2 x scale.micro_batch")
    max_examples: Optional[int] = option(None, "evaluate on N examples only: a sample of the "
                                                "eval split drawn with run.seed, the same at "
                                                "every world size (a stream: its first N)")
    metric: Optional[str] = option(None, "metric that picks the best checkpoint and early "
                                         "stopping; default by task: macro_f1, micro_f1, "
                                         "f1 (entities), f1 (SQuAD v2)")
    early_stopping_patience: Optional[int] = option(None, "stop after this many evaluations "
                                                          "without eval.metric improving")
    early_stopping_min_delta: float = option(0.0, "smallest change of eval.metric that counts "
                                                  "as an improvement")
    errors_kept: int = option(200, "misclassified examples written to errors.jsonl, most "
                                   "confident first")


@section
class RunConfig:
    name: Optional[str] = option(None, "run name; defaults to the recipe file's name")
    output_dir: Optional[str] = option(None, "run directory; defaults to runs/<name>-<time>")
    seed: int = option(42, "seed for weights, dropout and data order")
    max_steps: Optional[int] = option(None, "optimizer steps to train (or set epochs)")
    epochs: Optional[int] = option(None, "passes over the training data (or set max_steps)")
    log_every: int = option(10, "write metrics every N optimizer steps")
    trace_examples: bool = option(False, "write the id of every training example each rank "
                                         "reads to RUN_DIR/trace/rank{R}.txt")
    executor: Literal["local", "slurm"] = option("local", "where the job runs: this machine "
                                                          "(torchrun) or Slurm (submitit)")
    report_to: tuple[Literal[TRACKERS], ...] = option(
        ("tensorboard",), "experiment trackers rank 0 reports to, besides metrics.jsonl: "
                          "tensorboard (RUN_DIR/tensorboard), mlflow (RUN_DIR/mlruns, or "
                          "MLFLOW_TRACKING_URI), wandb (offline in RUN_DIR/wandb without "
                          "WANDB_API_KEY); () for none")


@section
class SlurmConfig:
    partition: Optional[str] = option(None, "partition (sbatch --partition); None: the "
                                            "cluster's default")
    account: Optional[str] = option(None, "account to charge (--account)")
    qos: Optional[str] = option(None, "quality of service (--qos)")
    time_min: int = option(60, "time limit of one job in minutes (--time); a preempted or "
                               "timed-out job is requeued and goes on from its checkpoint")
    constraint: Optional[str] = option(None, "node features (--constraint), e.g. 'a100'")
    gpus_per_node: Optional[int] = option(None, "GPUs per node (--gpus-per-node); default: "
                                                "scale.procs_per_node when scale.device is "
                                                "cuda, none when it is cpu")
    cpus_per_task: Optional[int] = option(None, "CPUs for each node's task (--cpus-per-task); "
                                                "default: scale.procs_per_node x "
                                                "(data.num_workers + 1)")
    mem: Optional[str] = option(None, "memory per node (--mem), e.g. '200G'")
    exclusive: bool = option(False, "whole nodes only (--exclusive)")
    extra_sbatch: tuple[str, ...] = option(doc="more '#SBATCH' options, e.g. ('--reservation=x',)",
                                 factory=tuple)
    setup: tuple[str, ...] = option(doc="shell lines run before the job, e.g. ('module load cuda/12',)",
                          factory=tuple)
    env: dict[str, str] = option(doc="environment variables for the job, e.g. {'NCCL_DEBUG': 'WARN'}; "
                                     "the values are written into plan.json and sbatch.sh "
                                     "(mode 0600): put secrets in pass_env",
                       factory=dict)
    pass_env: tuple[str, ...] = option(doc="names of variables the job takes from the shell "
                                           "that runs `launcher run`, e.g. ('WANDB_API_KEY',); "
                                           "their values are written nowhere", factory=tuple)
    max_requeues: int = option(3, "times a preempted or timed-out job is requeued before it "
                                  "is given up; a job that fails otherwise is not requeued")


@section
class Recipe:
    model: ModelConfig = option(doc="the network")
    task: TaskConfig = option(doc="what it learns")
    data: DataConfig = option(doc="what it reads")
    scale: ScaleConfig = option(doc="how many devices and how", factory=ScaleConfig)
    optim: OptimConfig = option(doc="the optimizer", factory=OptimConfig)
    checkpoint: CheckpointConfig = option(doc="saving state", factory=CheckpointConfig)
    eval: EvalConfig = option(doc="evaluation", factory=EvalConfig)
    run: RunConfig = option(doc="the run itself", factory=RunConfig)
    slurm: SlurmConfig = option(doc="Slurm submission (run.executor='slurm')",
                                factory=SlurmConfig)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "task": TaskConfig, "data": DataConfig, "scale": ScaleConfig,
    "optim": OptimConfig, "checkpoint": CheckpointConfig, "eval": EvalConfig, "run": RunConfig,
    "slurm": SlurmConfig,
}
SECTION_PATHS.update({cls: name for name, cls in SECTIONS.items()})
SECTION_PATHS[Recipe] = "recipe"


def to_dict(obj: Any) -> Any:
    """A recipe as plain JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
