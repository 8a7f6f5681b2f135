"""Time to first batch and data-wait share of the training data path, before and after
data.shuffle (issue 15), on a generated 1M-row JSONL file at 1, 2 and 4 ranks (CPU).

"before" is main's path: the file read as a stream in file order, every rank reading every row
(data.streaming=true data.shuffle=false). "after" is the default: the split prepared once as
Arrow, each rank reading only its rows by index. Each configuration is `launcher bench` of
the tiny recipe; time to first batch comes from the rank logs ("data: first micro batch
after ... s"), the data-wait share from the bench report.

    .venv/bin/python benchmarks/data_order.py OUT_DIR [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_rows(path: Path, rows: int) -> None:
    words = " ".join(json.loads(line)["text"] for line in
                     (ROOT / "data/tiny_news/train.jsonl").read_text().splitlines()[:2000]).split()
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(rows):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 20)))
            fh.write(json.dumps({"id": f"r{i}", "text": text, "label": i % 4}) + "\n")


def bench(out: Path, train: Path, world: int, mode: str) -> dict:
    extra = (["data.streaming=true", "data.shuffle=false"] if mode == "before" else [])
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "bench", str(ROOT / "recipes/tiny_news.py"),
         f"data.train={train}", "data.eval=None", "run.epochs=None", "run.max_steps=100",
         "--nproc-per-node", str(world), "--steps", "20", "--warmup", "3", "--out", str(out),
         *extra], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    report = json.loads((out / "report.json").read_text())
    firsts = [float(m) for log in out.rglob("rank*.log")
              for m in re.findall(r"first micro batch after ([0-9.]+) s", log.read_text())]
    rows = report["rows"] if "rows" in report else report
    return {"mode": mode, "world": world, "first_batch_s": max(firsts) if firsts else None,
            "data_wait_share": [r.get("data_wait_share") for r in rows] if isinstance(rows, list)
            else rows}


def data_only(train: Path, world: int, mode: str, batches: int = 100) -> dict:
    """The data path alone, in this process: rank 0 of `world` draws `batches` micro batches
    (no training, no DataLoader workers). Seconds per micro batch, after the first."""
    import time

    from launcher import plan as plan_mod
    from launcher import tasks
    from launcher.engine.data import train_batches
    from launcher.engine.model import build_tokenizer
    from launcher.recipe.load import load

    extra = ["data.streaming=true", "data.shuffle=false"] if mode == "before" else []
    plan = plan_mod.build(load(ROOT / "recipes/tiny_news.py", [
        f"data.train={train}", "data.eval=None", f"scale.procs_per_node={world}",
        "run.epochs=None", "run.max_steps=1000", "data.num_workers=0", *extra]))
    task = tasks.for_recipe(plan.recipe)
    stream = train_batches(plan, task, build_tokenizer(plan.recipe.model), 0, world)
    began = time.perf_counter()
    next(stream)
    first = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return {"mode": mode, "world": world, "first_batch_s": round(first, 3),
            "ms_per_micro_batch": round(1000 * (time.perf_counter() - began) / batches, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data-only", action="store_true",
                        help="only the data path, in this process (no launches)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = out / "train.jsonl"
    if not train.is_file():
        make_rows(train, args.rows)
    if args.data_only:
        for mode in ("after", "before"):
            for world in (1, 2, 4):
                print(json.dumps(data_only(train, world, mode)), flush=True)
        return
    results = []
    for mode, world in [("after", 1), ("after", 1), ("after", 2), ("after", 4),
                        ("before", 1), ("before", 2), ("before", 4)]:
        name = f"{mode}-w{world}-{sum(1 for r in results if r['mode'] == mode and r['world'] == world)}"
        results.append(bench(out / name, train, world, mode))
        print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
