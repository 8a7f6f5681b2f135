"""Shared helpers: run the real CLI in a subprocess (or in-process for refusals), offline, from
the repository root; and the `slow` marker: `pytest -m "not slow"` is the quick loop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# In-process plan building reads local files through HF datasets: never let it reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# What in-process CLI calls print is read line by line: rich would wrap it at 80 columns (its
# width when output is not a terminal), and where it wraps depends on the tmp path's length.
os.environ.setdefault("COLUMNS", "400")

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny_news.py"
# What the processes of a test session leave for each other (tests/launched/sitecustomize.py):
# transformers' table of lazy imports, built by the first of them. Made by pytest_configure.
_import_cache: list[Path] = []


# `slow`: every test that launches torchrun or Slurm, or takes more than ~2 s on 2 cores. Marked
# here, by module and test function name (None: the whole module), so that a file need not be
# edited to join the quick loop or leave it; a test may also carry @pytest.mark.slow itself.
SLOW: dict[str, set[str] | None] = {
    "test_bench": {"test_bench_on_cpu_writes_the_report_beside_hf_trainer",
                   "test_hf_trainer_best_result_has_every_field_and_counts_both_ranks",
                   "test_hf_trainer_best_pads_each_batch_to_a_multiple_of_8",
                   "test_hf_trainer_best_flops_lie_within_what_the_lengths_allow",
                   "test_hf_trainer_tutorial_pads_every_row_to_max_length",
                   "test_flop_formula_matches_torch_flop_counter",
                   "test_flop_shape_counts_the_pooled_head_once_per_row"},
    "test_ctrl_c": None,
    "test_data_formats": {"test_csv_train_with_label_names_and_parquet_eval",
                          "test_empty_rows_are_counted_reported_and_skipped"},
    "test_device": {"test_engine_refuses_a_cuda_plan_with_one_line"},
    "test_eval_device": None,
    "test_families": {"test_every_task_trains_every_family_with_dropout_and_head_overrides",
                      "test_packed_equals_padded_loss_and_gradients_in_every_family"},
    "test_family_cli": None,
    "test_family_strategies": None,
    "test_fuzz_plan": None,
    "test_grad_accum": None,
    "test_launched_env": None,
    "test_malformed_data": {"test_eval_data_and_predict_file_name_the_malformed_line",
                            "test_predict_file_needs_the_text_column_only"},
    "test_metrics": {"test_classification_matches_sklearn_on_random_data"},
    "test_multinode": {"test_accelerate_command_is_launch_sh_on_every_node",
                       "test_nodes_started_by_launch_sh_and_by_accelerate_train_as_one_world"},
    "test_packing": {"test_packed_run_on_two_ranks_logs_the_padded_runs_losses",
                     "test_one_step_packed_equals_padded_loss_and_gradients"},
    "test_plan_memory": {"test_a_recipe_too_big_for_its_gpu_is_warned_about_before_launch"},
    "test_rank_failure": None,
    "test_render": {"test_deepspeed_accepts_every_zero_config"},
    "test_resume": None,
    "test_shuffle": {"test_label_sorted_file_trains_as_well_as_the_shipped_one",
                     "test_one_rank_decodes_each_row_once_an_epoch",
                     "test_window_shuffled_stream_preempted_and_resumed_ends_with_the_same_weights"},
    "test_slurm": None,
    "test_step_loss": {"test_step_loss_and_gradients_are_the_same_at_every_split",
                       "test_packing_trains_on_the_same_step_loss"},
    "test_strategies": None,
    "test_stream_shards": {"test_two_ranks_read_their_own_shards"},
    "test_task_options": {"test_extra_head_layer_trains_exports_and_predicts",
                          "test_early_stopping_keeps_and_exports_the_best_checkpoint"},
    "test_tasks": None,
    "test_token_budget": {"test_preempted_on_2_ranks_resumed_on_3_trains_the_same_steps"},
    "test_trackers": {"test_mlflow_run_is_continued_after_preemption_with_every_point_once",
                      "test_wandb_offline_run_is_resumed_under_the_same_id",
                      "test_tensorboard_still_gets_the_train_and_eval_numbers",
                      "test_tracker_failing_during_training_is_warned_about_once_and_dropped",
                      "test_mlflow_resume_on_another_world_size_keeps_params_and_tags_the_change"},
    "test_train_local": None,
    "test_untrusted_checkpoints": {
        "test_crafted_dcp_checkpoint_is_refused_before_launch_and_by_eval"},
}
SLOW_PREFIXES = ("test_fsdp",)  # FSDP launches (engineer 14's new files): torchrun, all of them
QUICK_LIMIT_S = 2.0  # an unmarked test slower than this is named at the end of the run


def _is_slow(item: pytest.Item) -> bool:
    module = Path(str(item.fspath)).stem
    names = SLOW.get(module, set())
    return (names is None or module.startswith(SLOW_PREFIXES)
            or getattr(item, "originalname", item.name) in names)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)


_unmarked_slow: list[tuple[float, str]] = []


def pytest_runtest_logreport(report):
    if (report.when == "call" and report.duration > QUICK_LIMIT_S
            and "slow" not in report.keywords):
        _unmarked_slow.append((report.duration, report.nodeid))


def pytest_configure(config):
    _import_cache.append(Path(tempfile.mkdtemp(prefix="launcher-tests-")))


def pytest_unconfigure(config):
    for directory in _import_cache:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if _unmarked_slow:
        terminalreporter.section(f"tests over {QUICK_LIMIT_S:g} s not marked slow "
                                 f"(add them to tests/conftest.py SLOW)")
        for seconds, nodeid in sorted(_unmarked_slow, reverse=True):
            terminalreporter.write_line(f"{seconds:7.2f}s {nodeid}")


@pytest.fixture(scope="session", autouse=True)
def _early_launches(request, tmp_path_factory):
    """Launches a module reads late, started with the session in the background when a test
    that reads them is collected (a module's `EARLY`, a together.Early): they train on what
    the tests before them leave idle of the 2 cores (a fifth of the suite's time)."""
    modules = sorted({item.module for item in request.session.items
                      if hasattr(getattr(item, "module", None), "EARLY")
                      and set(item.module.EARLY.reads) & set(getattr(item, "fixturenames", ()))},
                     key=lambda module: module.__name__)
    early = [module.EARLY for module in modules]
    for launches in early:
        launches.start(tmp_path_factory)
    yield
    for launches in early:
        launches.stop()


def cli_env() -> dict[str, str]:
    """The environment of every process the tests launch: offline, the test extra's reference
    packages hidden from it, and transformers' import table shared between them
    (tests/launched/sitecustomize.py; tests/test_launched_env.py)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", COLUMNS="400",
               PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu", PYTHONPATH=os.pathsep.join(
                   p for p in (str(REPO / "tests" / "launched"), os.environ.get("PYTHONPATH"))
                   if p))
    if _import_cache:
        env["LAUNCHER_TESTS_IMPORT_CACHE"] = str(_import_cache[-1])
    return env


def launcher(*args: str, timeout: int = 300, fault: str | None = None) -> subprocess.CompletedProcess:
    """`python -m launcher ARGS`; `fault` is a LAUNCHER_FAULT spec (launcher/engine/faults.py)."""
    env = cli_env()
    if fault:
        env["LAUNCHER_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(monkeypatch):
    """`python -m launcher ARGS` in this process (launcher.cli.main, as `__main__` calls it), run
    from the repository root as `launcher()` runs it: a CompletedProcess with the exit status
    and what it printed. For refusals, which stop before any process would start."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "400")

    def call(*args) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(["launcher", *map(str, args)], *in_process(*args))
    return call


def in_process(*args) -> tuple[int, str, str]:
    """`launcher ARGS` in this process, from any fixture scope: exit status, stdout, stderr."""
    import contextlib
    import io

    from launcher.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's one-line refusal exits
            rc = exit_.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def repo() -> Path:
    return REPO


def decoded_per_epoch(rd) -> list[tuple[int, int, int, int]]:
    """(rank, epoch, rows decoded, own examples) from each rank's log: the data counter each
    rank logs when it hands over an epoch's last batch."""
    import re

    found = []
    for log in sorted(rd.logs.glob("rank*.log")):
        rank = int(log.stem[4:])
        for m in re.finditer(r"data: epoch (\d+): this rank decoded (\d+) rows for (\d+) "
                             r"examples of its own", log.read_text()):
            found.append((rank, int(m[1]), int(m[2]), int(m[3])))
    return found
