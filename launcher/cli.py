"""`python -m launcher VERB ...`: the command line. The parser, one line and exit 2 for every
mistake a user can make, and which module of launcher/commands/ runs each verb."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from rich.console import Console
from rich.markup import escape

from launcher.errors import RecipeError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit 2, like every other input mistake."""

    def error(self, message: str) -> None:
        message = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], message)
        sys.stderr.write(f"error: {message}. Fix: see `{self.prog} --help`\n")
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m launcher",
                     description="Fine-tune BERT-family encoders from a recipe.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in (("run", "plan and train a recipe"),
                            ("render", "write the plan files without running anything"),
                            ("plan-memory", "estimate per-GPU memory for every strategy")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("recipe", help="recipe file, e.g. recipes/tiny_news.py")
        p.add_argument("overrides", nargs="*", metavar="section.field=value",
                       help="change a recipe value, e.g. optim.lr=3e-5 scale.micro_batch=16")
        p.add_argument("--nodes", type=int, help="machines (sets scale.nodes)")
        p.add_argument("--nproc-per-node", "--gpus-per-node", dest="procs_per_node", type=int,
                       help="processes per machine (sets scale.procs_per_node)")
        p.add_argument("--explain", action="store_true",
                       help="print every resolved value and where it came from")
        p.add_argument("--executor", choices=["local", "slurm"],
                       help="where the job runs (sets run.executor)")
    sub.choices["render"].add_argument("--out", required=True, help="directory for the plan files")
    sw = sub.add_parser("sweep", help="run every combination of some values: job arrays on "
                                      "Slurm (one per distinct Slurm request), one run after "
                                      "another locally")
    sw.add_argument("recipe", help="recipe file")
    sw.add_argument("axes", nargs="+", metavar="section.field=v1,v2",
                    help="values to sweep, e.g. optim.lr=1e-5,2e-5 run.seed=1,2")
    sw.add_argument("--set", dest="fixed", action="append", default=[],
                    metavar="section.field=value", help="a value for every point")
    sw.add_argument("--nodes", type=int, help="machines (sets scale.nodes)")
    sw.add_argument("--nproc-per-node", "--gpus-per-node", dest="procs_per_node", type=int,
                    help="processes per machine")
    sw.add_argument("--executor", choices=["local", "slurm"], help="sets run.executor")
    sw.add_argument("--out", help="directory for the points' run directories")
    rs = sub.add_parser("resume", help="continue a run from its last complete checkpoint "
                                       "(after a preemption, a time limit or a crash)")
    rs.add_argument("run_dir", help="the run directory `launcher run` printed")
    rs.add_argument("--nodes", type=int, help="machines (default: as before)")
    rs.add_argument("--nproc-per-node", "--gpus-per-node", dest="procs_per_node", type=int,
                    help="processes per machine (default: as before); the global batch is "
                         "kept by changing the accumulation")
    rs.add_argument("--dry-run", action="store_true",
                    help="write RUN_DIR/plan/ and stop before launching")
    rs.add_argument("--executor", choices=["local", "slurm"],
                    help="where the job runs (default: as before)")
    bn = sub.add_parser("bench", help="measure training throughput (samples/s, tokens/s, MFU, "
                                      "step times, memory), beside HF Trainer if asked")
    bn.add_argument("recipe", help="recipe file, e.g. recipes/bert_large_ag_news.py")
    bn.add_argument("overrides", nargs="*", metavar="section.field=value",
                    help="change a recipe value, e.g. scale.precision=bf16")
    bn.add_argument("--steps", type=int, default=50, help="timed steps (default 50)")
    bn.add_argument("--warmup", type=int, default=10, help="steps before timing (default 10)")
    bn.add_argument("--out", help="directory for the report (default runs/bench-RECIPE-TIME)")
    bn.add_argument("--baseline", action="append", default=[],
                    choices=["hf-trainer", "hf-trainer-tutorial"],
                    help="also run HF Trainer on the same model, rows and batch: with its best "
                         "settings, or as the tutorials write it (repeatable)")
    bn.add_argument("--synthetic", action="store_true",
                    help="random weights of the recipe model's shape and rows with AG-News-like "
                         "lengths, for when the hub cannot be reached")
    bn.add_argument("--batch", default="", help="micro batches to measure, e.g. 32,256 "
                                                "(default: the recipe's)")
    bn.add_argument("--strategies", default="", help="strategies to measure, e.g. "
                                                     "ddp,zero2,zero3,fsdp (default: the recipe's)")
    bn.add_argument("--packing", choices=["recipe", "on", "off", "both"], default="recipe",
                    help="our engine with data.packing on, off, or both side by side "
                         "(default: as the recipe says)")
    bn.add_argument("--compile", default="", help="our engine under these scale.compile modes, "
                    "e.g. off,reduce-overhead (default: as the recipe says)")
    bn.add_argument("--nproc-per-node", "--gpus-per-node", dest="procs_per_node", type=int,
                    default=1, help="processes (GPUs) on this node (default 1)")
    bn.add_argument("--peak-tflops", type=float, help="the device's dense peak for the "
                    "precision, when launcher's table does not know it (for MFU)")
    st = sub.add_parser("status", help="state, step, loss, samples/s and ETA of a run")
    lg = sub.add_parser("logs", help="print one rank's log")
    ca = sub.add_parser("cancel", help="stop a run: cancel its Slurm job, or stop a local "
                                      "run (every rank saves its step first)")
    for p in (st, lg, ca):
        p.add_argument("run_dir", help="the run directory `launcher run` printed")
    lg.add_argument("--rank", type=int, default=0, help="which rank (default 0)")
    ev = sub.add_parser("eval", help="evaluate a run's final model or a checkpoint on its eval "
                                     "data or any file")
    pr = sub.add_parser("predict", help="print a run's predictions for texts or a file")
    for p in (ev, pr):
        p.add_argument("run_dir", help="the run directory `launcher run` printed")
        p.add_argument("--checkpoint", help="final (default), best, latest or step-N")
        p.add_argument("overrides", nargs="*", metavar="task.field=value",
                       help="how outputs become answers, e.g. task.null_threshold=2.5 (QA) or "
                            "task.threshold=0.3 (multi-label); the model is not changed")
    ev.add_argument("--data", help="file (or hub dataset) to evaluate on; default: the "
                                   "recipe's eval data")
    ev.add_argument("--nproc-per-node", dest="procs_per_node", type=int, default=1,
                    help="processes to evaluate with (the metrics do not depend on it)")
    pr.add_argument("--text", action="append", default=[],
                    help="text to predict (repeat for several; NER splits it on spaces; QA: "
                         "the question)")
    pr.add_argument("--pair", help="second text: hypothesis (NLI) or context (QA)")
    pr.add_argument("--file", help="JSONL/CSV/parquet file with the recipe's columns")
    sub.choices["run"].add_argument("--dry-run", action="store_true",
                                    help="write RUN_DIR/plan/ and stop before launching")
    return parser


# Each verb's module under launcher/commands/ (imported on use: `status` needs no torch).
COMMANDS = {"run": "run", "render": "render", "plan-memory": "plan_memory", "sweep": "sweep",
            "resume": "resume", "bench": "bench", "status": "status", "logs": "logs",
            "cancel": "cancel", "eval": "eval", "predict": "predict"}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may sit between flags (`R.py --nproc-per-node 2 optim.lr=3e-5`): collect strays.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    with_overrides = ("run", "render", "plan-memory", "bench", "eval", "predict")
    if unknown or (extra and args.command not in with_overrides):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if args.command in with_overrides:
        args.overrides = [*args.overrides, *extra]
    args.argv = list(sys.argv[1:] if argv is None else argv)
    console = Console()
    try:
        command = importlib.import_module(f"launcher.commands.{COMMANDS[args.command]}")
        return command.main(args, console)
    except RecipeError as err:
        # escape: a value echoed back ('[/x]', a path with brackets) is text, not rich markup.
        Console(stderr=True).print(f"[bold red]error:[/] {escape(err.one_line())}",
                                   highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
