"""run.report_to: what a preempted and resumed run logged, read back by MLflow's own client and
from W&B's own offline run files; and the mistakes refused before launch."""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, cli_env
from together import Chain, Early
from launcher import cli
from launcher.run_dir import RunDir

# 2 ranks; preempted at step 7 on rank 1, so both save step 8; resumed to 12.
ARGS = ["--nproc-per-node", "2", "run.max_steps=12", "run.epochs=None", "run.log_every=2",
        "eval.every=6", "eval.max_examples=64", "checkpoint.every=0",
        "run.report_to=tensorboard,mlflow,wandb"]


def _env(**extra: str) -> dict[str, str]:
    env = cli_env()
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_MODE",
                "WANDB_PROJECT", "MLFLOW_ALLOW_FILE_STORE"):
        env.pop(key, None)
    return {**env, **extra}


def _launch(root: Path) -> dict:
    """The run and its resume."""
    return {"chain": Chain(lambda chain: _preempted_and_resumed(chain, root / "run"))}


EARLY = Early("trackers", _launch, reads=("run",))  # with the session: read late


def _preempted_and_resumed(chain: Chain, out) -> RunDir:
    (first,) = chain.launch(["run", TINY, *ARGS, f"run.output_dir={out}"],
                            faults=("at=step,step=7,rank=1,do=TERM",), base_env=_env())
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-3000:]
    (second,) = chain.launch(["resume", out], base_env=_env())
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "Traceback" not in first.stderr + second.stderr
    return RunDir(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    return EARLY.start(tmp_path_factory)["chain"].result()


def _logged(rd: RunDir) -> list[dict]:
    return [json.loads(line) for line in rd.metrics.read_text().splitlines()]


def _eval(rd: RunDir, step: int) -> dict:
    return json.loads((rd.eval / f"step-{step:07d}" / "metrics.json").read_text())


def test_mlflow_run_is_continued_after_preemption_with_every_point_once(run, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as `mlflow ui` needs it too
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=str(run.root / "mlruns"))
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) == 1, "one MLflow run: rank 0 only, and the resume went on in it"
    info, data = runs[0].info, runs[0].data
    state = json.loads((run.checkpoint(8) / "trainer_state.json").read_text())
    assert state["trackers"]["mlflow"] == info.run_id
    assert info.status == "FINISHED" and info.run_name == "run"
    assert data.tags["launcher.preempted_at_step"] == "8"
    # params: the resolved recipe, section.field, and the plan's derived values
    assert data.params["model.name"] == str(REPO / "models" / "tiny-bert")
    assert data.params["run.max_steps"] == "12" and data.params["plan.world_size"] == "2"
    assert json.loads(data.params["run.report_to"]) == ["tensorboard", "mlflow", "wandb"]
    # every log step once, as metrics.jsonl has it, across the preemption
    logged = _logged(run)
    assert [r["step"] for r in logged] == [2, 4, 6, 8, 10, 12]
    for key in ("loss", "lr", "samples_per_s", "tokens_per_s"):
        history = client.get_metric_history(info.run_id, f"train/{key}")
        assert [(m.step, m.value) for m in history] == [(r["step"], r[key]) for r in logged]
    for key in ("accuracy", "macro_f1", "per_class/World/f1"):
        history = client.get_metric_history(info.run_id, f"eval/{key}")
        want = [_eval(run, s)[key] if "/" not in key else _eval(run, s)["per_class"]["World"]["f1"]
                for s in (6, 12)]
        assert [(m.step, m.value) for m in history] == list(zip((6, 12), want))
    artifacts = {a.path for a in client.list_artifacts(info.run_id)}
    assert "summary.json" in artifacts
    for step in (6, 12):
        folder = f"eval/step-{step:07d}"
        assert {a.path for a in client.list_artifacts(info.run_id, folder)} == {
            f"{folder}/confusion_matrix.png", f"{folder}/metrics.json"}
    local = Path(client.download_artifacts(info.run_id, "summary.json", str(run.root / "dl")))
    assert json.loads(local.read_text()) == json.loads(run.summary.read_text())


# W&B writes its offline runs as a LevelDB-style log of protobuf records (wandb's own
# proto module reads them); it ships no Python reader for the file any more.
def _wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _history(records) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                         for i in r.history.item})
    return rows


def test_wandb_offline_run_is_resumed_under_the_same_id(run):
    state = json.loads((run.checkpoint(8) / "trainer_state.json").read_text())
    run_id = state["trackers"]["wandb"]
    attempts = sorted((run.root / "wandb").glob("offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in attempts] == [run_id, run_id], attempts
    logged = {r["step"]: r for r in _logged(run)}
    seen_steps, exits = [], []
    for attempt, steps in zip(attempts, ([2, 4, 6, 8], [10, 12])):
        records = list(_wandb_records(attempt / f"run-{run_id}.wandb"))
        assert [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"] == [run_id]
        rows = _history(records)
        train = [row for row in rows if "train/loss" in row]
        assert [row["_step"] for row in train] == steps
        assert all(row["train/loss"] == logged[row["_step"]]["loss"] for row in train)
        seen_steps += [row["_step"] for row in train]
        evals = {row["_step"]: row["eval/accuracy"] for row in rows if "eval/accuracy" in row}
        assert evals == {s: _eval(run, s)["accuracy"] for s in (6, 12) if s in steps}
        config = {i.key: json.loads(i.value_json) for r in records
                  for i in (r.run.config.update if r.WhichOneof("record_type") == "run" else
                            r.config.update if r.WhichOneof("record_type") == "config" else ())}
        assert config["plan.world_size"] == 2 and config["run.report_to"][1] == "mlflow"
        exits += [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert seen_steps == sorted(logged) and exits == [75, 0]
    first, second = (p / "files" for p in attempts)
    assert (first / "eval" / "step-0000006" / "confusion_matrix.png").is_file()
    assert json.loads((second / "summary.json").read_text())["resumed_from"] == 8


def test_tensorboard_still_gets_the_train_and_eval_numbers(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.tensorboard))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [6, 12]


def _main(capsys, *args: str) -> tuple[int, str]:
    rc = cli.main(["run", str(TINY), *args])
    return rc, capsys.readouterr().err


def test_unknown_tracker_is_one_line(tmp_path, capsys):
    rc, err = _main(capsys, "run.report_to=tensorboard,neptune", f"run.output_dir={tmp_path / 'r'}")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "run.report_to" in err and "'neptune'" in err and "'mlflow', 'wandb'" in err
    assert not (tmp_path / "r").exists()


def test_tracker_without_its_package_is_refused_with_the_pip_command(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # Python's own "this cannot be imported"
    rc, err = _main(capsys, "run.report_to=tensorboard,wandb", f"run.output_dir={tmp_path / 'r'}")
    assert rc == 2 and "Traceback" not in err
    assert "run.report_to" in err and "pip install wandb" in err
    assert not (tmp_path / "r").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_server_is_refused_before_launch(tmp_path, capsys, monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rc, err = _main(capsys, "run.report_to=mlflow", f"run.output_dir={tmp_path / 'r'}")
    assert rc == 2 and "Traceback" not in err
    assert f"MLFLOW_TRACKING_URI={uri}" in " ".join(err.split()) and "refused" in err
    assert not (tmp_path / "r").exists()


def test_tracker_failing_during_training_is_warned_about_once_and_dropped(tmp_path,
                                                                          monkeypatch):
    """The server goes away after the launch check: training goes on, every number still in
    metrics.jsonl and TensorBoard, one warning naming the tracker."""
    from launcher import plan as plan_mod
    from launcher.engine.metrics_log import MetricsLog
    from launcher.recipe.load import load

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    plan = plan_mod.build(load(TINY, [f"run.output_dir={tmp_path / 'r'}",
                                      "run.report_to=mlflow,tensorboard"]))
    rd = RunDir(plan.run_dir)
    rd.root.mkdir(parents=True)
    warnings: list[str] = []
    log = MetricsLog(plan, rd, warn=warnings.append)
    for step in (10, 20):
        log.train({"step": step, "epoch": 0, "loss": 1.0 / step, "lr": 1e-3})
    log.eval(20, {"step": 20, "accuracy": 0.5, "per_class": {"World": {"f1": 0.4}}},
             rd.eval / "step-0000020")
    log.close()
    assert len(warnings) == 1 and warnings[0].startswith("mlflow failed")
    assert [r["step"] for r in _logged(rd)] == [10, 20]
    assert list(rd.tensorboard.glob("events.out.tfevents.*"))
    assert log.run_ids() == {}


def test_mlflow_resume_on_another_world_size_keeps_params_and_tags_the_change(tmp_path,
                                                                              monkeypatch):
    """MLflow params never change: a resume on 1 rank of a 2-rank run says so in tags."""
    from mlflow import MlflowClient

    from launcher import plan as plan_mod
    from launcher.engine.metrics_log import MetricsLog
    from launcher.recipe.load import load

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "r"

    def plan(procs: int):
        return plan_mod.build(load(TINY, [f"run.output_dir={out}", "run.report_to=mlflow",
                                          f"scale.procs_per_node={procs}"]))
    rd = RunDir(out)
    rd.root.mkdir(parents=True)
    first = MetricsLog(plan(2), rd, warn=pytest.fail)
    first.train({"step": 8, "loss": 0.5})
    first.close("preempted")
    second = MetricsLog(plan(1), rd, after_step=8, run_ids=first.run_ids(), warn=pytest.fail)
    assert second.run_ids() == first.run_ids()
    second.train({"step": 10, "loss": 0.25})
    second.close("finished")
    client = MlflowClient(tracking_uri=str(rd.root / "mlruns"))
    run = client.get_run(first.run_ids()["mlflow"])
    assert run.info.status == "FINISHED"
    assert run.data.params["plan.world_size"] == "2"
    assert run.data.tags["resumed_at_step_8.plan.world_size"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [8, 10]
