"""`render` writes the files a launch needs, and the libraries that own them accept them.

Golden files live in tests/golden/<recipe>/; regenerate them after an intended change with

    UPDATE_GOLDEN=1 pytest tests/test_render.py -k golden

and review the diff before committing.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher import plan as plan_mod
from launcher.recipe.load import load
from launcher.recipe.schema import PRECISIONS, STRATEGIES

from conftest import REPO, TINY, cli_env, launcher

RECIPES = REPO / "recipes"
BERT_LARGE = RECIPES / "bert_large_ag_news.py"
GOLDEN = Path(__file__).resolve().parent / "golden"
ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}


def _render(recipe: Path, *args: str, out: Path) -> subprocess.CompletedProcess:
    proc = launcher("render", recipe, *args, "--out", out, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _render_api(recipe: Path, overrides: list[str], out: Path) -> plan_mod.Plan:
    plan = plan_mod.build(load(recipe, overrides))
    plan_mod.write(plan, out)
    return plan


# --- a. the 2 x 8 BERT-large plan ------------------------------------------------------------

def _read_all(out: Path) -> tuple[dict, dict, dict, str]:
    return (json.loads((out / "plan.json").read_text()),
            json.loads((out / "deepspeed.json").read_text()),
            yaml.safe_load((out / "accelerate.yaml").read_text()),
            (out / "launch.sh").read_text())


def test_bert_large_on_2_nodes_x_8_gpus(tmp_path):
    out = tmp_path / "plan"
    _render(BERT_LARGE, "--nodes", "2", "--gpus-per-node", "8", out=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["plan.json", "accelerate.yaml", "launch.sh", "deepspeed.json"])
    plan, ds, acc, launch = _read_all(out)

    assert (plan["nodes"], plan["procs_per_node"], plan["world_size"]) == (2, 8, 16)
    assert (plan["micro_batch"], plan["grad_accum"], plan["global_batch"]) == (32, 1, 512)
    assert plan["micro_batch"] * plan["grad_accum"] * plan["world_size"] == plan["global_batch"]

    assert ds["train_batch_size"] == 512
    assert ds["train_micro_batch_size_per_gpu"] == 32
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False

    assert acc["num_processes"] == 16 and acc["num_machines"] == 2
    assert acc["distributed_type"] == "DEEPSPEED"
    assert acc["deepspeed_config"]["deepspeed_config_file"] == str(out / "deepspeed.json")

    assert "--nnodes 2 --nproc-per-node 8" in launch
    assert f"-m launcher.engine {out / 'plan.json'}" in launch
    assert os.access(out / "launch.sh", os.X_OK)


def test_bert_large_global_batch_1024_doubles_accumulation(tmp_path):
    out = tmp_path / "plan"
    _render(BERT_LARGE, "--nodes", "2", "--gpus-per-node", "8", "scale.global_batch=1024",
            out=out)
    plan, ds, acc, _ = _read_all(out)
    assert (plan["world_size"], plan["micro_batch"], plan["grad_accum"], plan["global_batch"]) == (
        16, 32, 2, 1024)
    assert plan["sources"]["scale.global_batch"] == "CLI override"
    assert plan["sources"]["scale.grad_accum"] == "derived"
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"],
            ds["gradient_accumulation_steps"]) == (1024, 32, 2)
    assert plan["steps_per_epoch"] == 120_000 // 1024
    assert acc["num_processes"] == 16


# --- b. golden files ---------------------------------------------------------------------------

GOLDEN_CASES = {
    "bert_large_ag_news": (BERT_LARGE, ["--nodes", "2", "--gpus-per-node", "8"]),
    # scale.device said, so the golden does not depend on whether this machine has a GPU
    "tiny_news": (TINY, ["--nproc-per-node", "2", "scale.device=cpu"]),
}


def _normalise(text: str, out: Path) -> str:
    return text.replace(str(out), "<PLAN>").replace(str(REPO), "<REPO>")


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden(tmp_path, name):
    recipe, flags = GOLDEN_CASES[name]
    out = tmp_path / "plan"
    _render(recipe, *flags, "run.output_dir=/golden/run", out=out)
    rendered = {p.name: _normalise(p.read_text(), out) for p in sorted(out.iterdir())}
    golden_dir = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden_dir.mkdir(parents=True, exist_ok=True)
        for stale in golden_dir.iterdir():
            stale.unlink()
        for file_name, text in rendered.items():
            (golden_dir / file_name).write_text(text)
        pytest.skip(f"UPDATE_GOLDEN=1: wrote {golden_dir}; review the diff")
    assert golden_dir.is_dir(), f"no goldens in {golden_dir}; run with UPDATE_GOLDEN=1"
    assert sorted(rendered) == sorted(p.name for p in golden_dir.iterdir())
    for file_name, text in rendered.items():
        expected = (golden_dir / file_name).read_text()
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=f"golden/{name}/{file_name}", tofile="rendered"))
        assert text == expected, f"{file_name} differs (UPDATE_GOLDEN=1 to accept):\n{diff}"


# The flagship job's sbatch.sh as we expect Slurm to get it: the GPUs (one per process), CPUs
# for every process and its data workers, the time limit and the warning signal; and the same
# job on CPU nodes (no GPUs) with the request changed through the recipe's slurm section.
SBATCH_CASES = {
    "sbatch.sh": [],
    "sbatch-cpu-mem.sh": ["scale.device=cpu", "slurm.cpus_per_task=32", "slurm.mem=200G",
                          "slurm.time_min=240", "slurm.partition=cpu"],
}


@pytest.mark.parametrize("file_name", sorted(SBATCH_CASES))
def test_golden_sbatch(file_name):
    from launcher.executors.slurm import sbatch_script

    plan = plan_mod.build(load(BERT_LARGE, ["run.executor=slurm", "scale.nodes=2",
                                            "run.output_dir=/golden/run",
                                            *SBATCH_CASES[file_name]]))
    text = sbatch_script(plan).replace(sys.executable, "<PYTHON>")
    golden = GOLDEN / "bert_large_ag_news_slurm" / file_name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
        pytest.skip(f"UPDATE_GOLDEN=1: wrote {golden}; review the diff")
    diff = "".join(difflib.unified_diff(golden.read_text().splitlines(keepends=True),
                                        text.splitlines(keepends=True),
                                        fromfile=str(golden), tofile="rendered"))
    assert text == golden.read_text(), f"{file_name} differs (UPDATE_GOLDEN=1 to accept):\n{diff}"


# --- c. the owning libraries read the files back ----------------------------------------------

ACCELERATE_TYPE = {"ddp": "MULTI_GPU", "fsdp": "FSDP", **{s: "DEEPSPEED" for s in ZERO_STAGES}}
ACCELERATE_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_accelerate_loads_the_config(tmp_path, strategy, precision):
    from accelerate.commands.config.config_args import load_config_from_file

    out = tmp_path / "plan"
    plan = _render_api(TINY, ["scale.nodes=2", "scale.procs_per_node=2",
                              f"scale.strategy={strategy}", f"scale.precision={precision}"], out)
    config = load_config_from_file(str(out / "accelerate.yaml"))
    assert config.num_processes == plan.world_size == 4
    assert config.num_machines == plan.nodes == 2
    assert str(config.distributed_type.value) == ACCELERATE_TYPE[strategy]
    if strategy in ZERO_STAGES:
        # No mixed_precision in the YAML: accelerate takes precision (and batch sizes) from
        # deepspeed.json, which must say the recipe's precision.
        assert config.mixed_precision is None
        ds_file = Path(config.deepspeed_config["deepspeed_config_file"])
        assert ds_file == out / "deepspeed.json" and ds_file.is_file()
        ds = json.loads(ds_file.read_text())
        assert ds["bf16"]["enabled"] == (precision == "bf16")
        assert ds["fp16"]["enabled"] == (precision == "fp16")
        assert config.deepspeed_config["zero3_init_flag"] is False
    else:
        assert config.mixed_precision == ACCELERATE_PRECISION[precision]
        assert not (out / "deepspeed.json").exists()
    if strategy == "fsdp":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"


def test_accelerate_single_process_is_not_distributed(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    out = tmp_path / "plan"
    _render_api(TINY, [], out)
    config = load_config_from_file(str(out / "accelerate.yaml"))
    assert config.num_processes == 1 and str(config.distributed_type.value) == "NO"
    assert config.mixed_precision == "no"  # tiny_news trains in fp32


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_deepspeed_accepts_every_zero_config(tmp_path):
    """DeepSpeedConfig, in a real 2-process gloo group, for every ZeRO strategy x precision."""
    cases = []

    def add(recipe: Path, overrides: list[str], name: str) -> None:
        out = tmp_path / name
        plan = _render_api(recipe, overrides, out)
        strategy = plan.recipe.scale.strategy
        cases.append({"path": str(out / "deepspeed.json"), "world_size": plan.world_size,
                      "train_batch_size": plan.global_batch, "micro": plan.micro_batch,
                      "accum": plan.grad_accum, "stage": ZERO_STAGES[strategy],
                      "precision": plan.recipe.scale.precision,
                      "offload": strategy == "zero3_offload"})

    for strategy in ZERO_STAGES:
        for i, precision in enumerate(PRECISIONS):
            # Every other combination with accumulation: 32 x 2 x 2 ranks = 128.
            batch = ["scale.global_batch=128"] if i % 2 else []
            # cuda: fp16 is refused on a cpu plan (these configs are only read, not trained)
            add(TINY, ["scale.procs_per_node=2", "scale.device=cuda", f"scale.strategy={strategy}",
                       f"scale.precision={precision}", *batch], f"tiny-{strategy}-{precision}")
    # The 16-rank plan, checked through an mpu reporting its data-parallel size.
    add(BERT_LARGE, ["scale.nodes=2", "scale.procs_per_node=8"], "bert-large-512")
    add(BERT_LARGE, ["scale.nodes=2", "scale.procs_per_node=8", "scale.global_batch=1024",
                     "scale.strategy=zero3_offload", "scale.precision=fp16"], "bert-large-1024")
    assert {c["accum"] for c in cases} == {1, 2} and {c["world_size"] for c in cases} == {2, 16}

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(cases))
    results = tmp_path / "results"
    results.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(Path(__file__).with_name("ds_config_check.py")), str(manifest), str(results)],
        cwd=REPO, env=dict(cli_env(), OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for rank in (0, 1):
        report = json.loads((results / f"rank{rank}.json").read_text())
        assert report["group_size"] == 2
        assert report["checked"] == [c["path"] for c in cases]
        assert not report["failures"], json.dumps(report["failures"], indent=2)


# --- d. every shipped recipe renders -----------------------------------------------------------

# Recipes that read in-house files from cluster storage render here on the tiny twin's data.
LOCAL_DATA = {"bert_base_news_multilabel": [f"data.train={REPO}/data/tiny_multilabel/train.jsonl",
                                            f"data.eval={REPO}/data/tiny_multilabel/eval.jsonl",
                                            "task.labels=politics,sports,business,tech,health"]}


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.py")), ids=lambda p: p.stem)
def test_every_recipe_renders(tmp_path, recipe):
    out = tmp_path / "plan"
    proc = _render(recipe, *LOCAL_DATA.get(recipe.stem, []), out=out)
    assert not proc.stderr.strip(), proc.stderr
    plan = plan_mod.Plan.from_json((out / "plan.json").read_text())
    assert plan.micro_batch * plan.grad_accum * plan.world_size == plan.global_batch
    assert {"plan.json", "accelerate.yaml", "launch.sh"} <= {p.name for p in out.iterdir()}
