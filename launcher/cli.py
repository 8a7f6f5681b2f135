"""`python -m launcher {run,render} RECIPE [section.field=value ...]`: parse, build, run;
`python -m launcher resume RUN_DIR`: go on from the run's last checkpoint;
`python -m launcher {eval,predict} RUN_DIR ...`: use what a run trained."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

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
    ca = sub.add_parser("cancel", help="cancel a run's Slurm job")
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


def _scale_overrides(args: argparse.Namespace) -> list[str]:
    flags = []
    for flag, key, value in (("--nodes", "scale.nodes", getattr(args, "nodes", None)),
                             ("--nproc-per-node", "scale.procs_per_node", args.procs_per_node),
                             ("--executor", "run.executor", getattr(args, "executor", None))):
        if value is not None:
            flags.append(f"{key}={value}")
    return flags


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
        return _dispatch(args, console)
    except RecipeError as err:
        # escape: a value echoed back ('[/x]', a path with brackets) is text, not rich markup.
        Console(stderr=True).print(f"[bold red]error:[/] {escape(err.one_line())}",
                                   highlight=False, soft_wrap=True)
        return 2


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "sweep":
        from launcher.sweep import sweep_command
        return sweep_command(args.recipe, args.axes, [*args.fixed, *_scale_overrides(args)],
                             args.out, console)
    if args.command in ("status", "logs", "cancel"):
        from launcher import jobs
        if args.command == "status":
            return jobs.status_command(args.run_dir, console)
        if args.command == "logs":
            return jobs.logs_command(args.run_dir, args.rank, console)
        return jobs.cancel_command(args.run_dir, console)
    if args.command == "eval":
        from launcher.trained import eval_command
        return eval_command(args.run_dir, args.checkpoint, args.data, args.procs_per_node, console,
                            args.overrides)
    if args.command == "predict":
        from launcher.trained import predict_command
        return predict_command(args.run_dir, args.checkpoint, args.text, args.pair, args.file,
                               console, args.overrides)
    from launcher import plan as plan_mod
    from launcher.plan.explain import explain
    from launcher.recipe.load import load

    if args.command == "resume":
        from launcher.resume import resume_plan
        return _launch(resume_plan(args.run_dir, args.nodes, args.procs_per_node,
                                   args.executor), args, console, must_resume=True)
    loaded = load(args.recipe, [*args.overrides, *_scale_overrides(args)])
    if args.command == "bench":
        from launcher.bench.run import bench_command
        return bench_command(
            loaded, steps=args.steps, warmup=args.warmup, out=args.out, baselines=args.baseline,
            synthetic_data=args.synthetic, batches=_ints(args.batch, "--batch"),
            strategies=[s for s in args.strategies.split(",") if s], procs=args.procs_per_node,
            peak=args.peak_tflops, argv=args.argv, console=console, packing=args.packing,
            compiles=[m for m in args.compile.split(",") if m])
    if args.command == "plan-memory":
        from launcher.plan.memory_report import memory_command
        plan = plan_mod.build(loaded)
        try:
            return memory_command(plan, console)
        except RecipeError as err:
            raise err.with_source(_shown(plan.recipe_path)) from None
    if args.command == "render":
        plan = plan_mod.build(loaded)
        _model_note(plan, console)
        _data_notes(plan, console)
        _memory_note(plan, console)
        if args.explain:
            explain(plan, console)
        # Absolute, so launch.sh and accelerate.yaml work from any directory.
        out = Path(args.out).resolve()
        for path in plan_mod.write(plan, out):
            console.print(f"wrote {path}")
        if plan.recipe.run.executor == "slurm":
            from launcher.executors.slurm import sbatch_script
            from launcher.plan.render import private, write_file
            write_file(out / "sbatch.sh", sbatch_script(plan), private=private(plan))
            console.print(f"wrote {out / 'sbatch.sh'}")
        return 0

    return _launch(plan_mod.build(loaded), args, console)


def _launch(plan, args: argparse.Namespace, console: Console, must_resume: bool = False) -> int:
    from launcher.plan.explain import explain

    if plan.recipe.run.executor == "slurm":
        from launcher.executors.slurm import SlurmExecutor
        executor = SlurmExecutor()
    else:
        from launcher.executors.local import LocalExecutor
        executor = LocalExecutor()
    check_model(plan)
    _data_notes(plan, console)
    _memory_note(plan, console)
    step = executor.check(plan)
    if step is None and must_resume:
        raise RecipeError("RUN_DIR", f"{plan.run_dir} has no checkpoint to resume from",
                          "start it again with `launcher run` and the same run.output_dir")
    if step is not None:
        console.print(f"resuming {plan.run_dir} from step {step} of {plan.total_steps}",
                      highlight=False)
    if getattr(args, "explain", False):
        explain(plan, console)
    plan_dir = executor.prepare(plan)
    if args.dry_run:
        console.print(f"plan written to {plan_dir}; not launched (--dry-run)")
        return 0
    return executor.run(plan, plan_dir, console)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RecipeError(flag, f"is {text!r}", "give whole numbers separated by commas, "
                          "e.g. 32,256") from None
    if any(v < 1 for v in values):
        raise RecipeError(flag, f"is {text!r}", "give numbers of 1 or more")
    return values


def _memory_note(plan, console: Console) -> None:
    from launcher import tasks
    from launcher.plan.memory import fit_warning

    try:
        warning = fit_warning(plan, tasks.for_recipe(plan.recipe))
    except RecipeError as err:
        raise err.with_source(_shown(plan.recipe_path)) from None
    if warning:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def check_model(plan) -> None:
    """Before anything is launched (or written by --dry-run): the model and tokenizer exist."""
    from launcher.plan import model_source

    try:
        model_source.check(plan.recipe.model)
    except RecipeError as err:
        raise err.with_source(_shown(plan.recipe_path)) from None


def _model_note(plan, console: Console) -> None:
    """`render` writes files for another machine (a cluster whose cache may hold the model):
    a model not found here is a warning, not an error."""
    try:
        check_model(plan)
    except RecipeError as err:
        console.print(f"[yellow]warning:[/] {escape(err.one_line())} (`run` refuses this)",
                      highlight=False, soft_wrap=True)


def _shown(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _data_notes(plan, console: Console) -> None:
    from launcher.plan.scan import Scan

    for which, found in plan.data_checks.items():
        note = Scan(**found).describe_empty(f"data.{which}")
        if note:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
