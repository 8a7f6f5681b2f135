"""`launcher bench RECIPE`: training throughput, beside HF Trainer if asked (launcher.bench)."""

from __future__ import annotations

from rich.console import Console

from launcher.commands.launch import scale_overrides
from launcher.errors import RecipeError
from launcher.recipe.load import load


def main(args, console: Console) -> int:
    from launcher.bench.run import bench_command

    loaded = load(args.recipe, [*args.overrides, *scale_overrides(args)])
    return bench_command(
        loaded, steps=args.steps, warmup=args.warmup, out=args.out, baselines=args.baseline,
        synthetic_data=args.synthetic, batches=_ints(args.batch, "--batch"),
        strategies=[s for s in args.strategies.split(",") if s], procs=args.procs_per_node,
        peak=args.peak_tflops, argv=args.argv, console=console, packing=args.packing,
        compiles=[m for m in args.compile.split(",") if m])


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RecipeError(flag, f"is {text!r}", "give whole numbers separated by commas, "
                          "e.g. 32,256") from None
    if any(v < 1 for v in values):
        raise RecipeError(flag, f"is {text!r}", "give numbers of 1 or more")
    return values
