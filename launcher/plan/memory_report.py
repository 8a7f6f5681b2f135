"""`launcher plan-memory R.py`: the per-GPU memory estimate of every strategy, as a table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from launcher import tasks
from launcher.errors import RecipeError
from launcher.plan.memory import GIB, estimate, gpu_gib


def memory_command(plan, console: Console) -> int:
    r = plan.recipe
    found = estimate(plan, tasks.for_recipe(r))
    if found is None:
        raise RecipeError("model.name", f"the shape of {r.model.name} is not known offline (no "
                          "local config.json, not in the built-in table, not in the HF cache)",
                          "point model.name at a local model directory, or download the model "
                          "once so its config is cached")
    psi, rows = found
    cap = gpu_gib(r.scale.gpu)
    table = Table(title=f"Per-GPU memory, {psi / 1e6:,.1f}M parameters, {plan.world_size} "
                        f"GPU(s), {r.scale.precision}, micro batch {r.scale.micro_batch} x "
                        f"{r.data.max_length} tokens", title_justify="left")
    for col in ("strategy", "weights", "gradients", "optimizer", "activations", "total GiB",
                *(["fits " + r.scale.gpu] if cap else [])):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for e in rows:
        mark = " (recipe)" if e.strategy == r.scale.strategy else ""
        cells = [f"{v / GIB:.2f}" for v in (e.weights, e.gradients, e.optimizer, e.activations,
                                             e.total)]
        fits = ["yes" if e.total / GIB <= cap else "[red]no[/]"] if cap else []
        table.add_row(e.strategy + mark, *cells, *fits)
    console.print(table)
    console.print("Model states as in the ZeRO paper (Adam: 16 bytes per parameter, split by "
                  "the strategy); activations estimated for one micro batch at full length "
                  "(34h + 5as bytes per token per layer, 16-bit). Frameworks add buffers and "
                  "fragmentation on top: keep a margin.", highlight=False)
    return 0
