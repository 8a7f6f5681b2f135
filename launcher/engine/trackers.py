"""Experiment trackers (`run.report_to`): TensorBoard, MLflow, Weights & Biases.

Rank 0 alone reports. Each tracker is one small class (start, log_params, log_metrics,
log_artifact, finish); `Trackers` fans every call out to the recipe's trackers, and a tracker
that raises is warned about once and dropped, so a tracking server going away never stops
training (metrics.jsonl keeps every number). What can be checked before launching (the package
is installed, an http(s) MLflow server answers) is checked by `check`, in the launcher.

A resumed run continues the same MLflow run and W&B run: their ids are saved in the
checkpoint's trainer_state.json (`trackers`) and handed back to `start`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

from launcher.errors import RecipeError

log = logging.getLogger("launcher.engine")

# tracker -> (module to import, what to pip install)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}
# MLflow's limits on a param (mlflow.utils.validation: MAX_PARAM_VAL_LENGTH) and a batch.
_MLFLOW_PARAM_CHARS = 6000
_MLFLOW_BATCH_PARAMS = 100
_MLFLOW_BATCH_METRICS = 1000
_STATUS = {"finished": "FINISHED", "preempted": "KILLED", "failed": "FAILED"}


def _installed(module: str) -> bool:
    if module in sys.modules:  # None there means "do not import" (Python's own convention)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check(plan: Any, environ: Optional[dict] = None) -> None:
    """Refuse, before launching, a tracker that cannot work from here (RecipeError)."""
    environ = os.environ if environ is None else environ
    names = plan.recipe.run.report_to
    for name in names:
        module, package = PACKAGES[name]
        if not _installed(module):
            raise RecipeError("run.report_to", f"reports to {name} but the {package} package "
                              f"is not installed in {sys.prefix}",
                              f"pip install {package} (or pip install 'launcher[trackers]'), "
                              f"or drop {name} from run.report_to")
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if "mlflow" in names and uri.startswith(("http://", "https://")):
        why = _unreachable(uri)
        if why:
            raise RecipeError("run.report_to", f"reports to mlflow at MLFLOW_TRACKING_URI={uri}, "
                              f"which does not answer from here ({why})",
                              "start the server or fix the URI, unset MLFLOW_TRACKING_URI to log "
                              "to RUN_DIR/mlruns, or drop mlflow from run.report_to")


def _unreachable(uri: str) -> Optional[str]:
    """Why an MLflow server cannot be reached (None: it answered, whatever it said)."""
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=10):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: authentication and the like are MLflow's to report
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Numbers only, nested keys joined with '/' (lists such as a confusion matrix are left
    to the artifacts)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def recipe_params(plan: Any) -> dict[str, Any]:
    """The resolved recipe as section.field -> value, and the plan's derived values as plan.*
    (JSON-able values; MLflow gets them as text)."""
    from launcher.recipe.schema import to_dict

    params: dict[str, Any] = {}
    for section, fields in to_dict(plan.recipe).items():
        for field, value in fields.items():
            if section == "slurm" and field == "env":
                value = sorted(value)  # the names only: values may be secrets
            params[f"{section}.{field}"] = value
    for key, value in plan.derived.items():
        params[f"plan.{key}"] = value
    return params


class TensorBoard:
    name = "tensorboard"

    def __init__(self, rd: Any):
        self.dir = rd.tensorboard
        self.writer = None

    def start(self, run_id: Optional[str], *, after_step: int) -> Optional[str]:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the earlier event files' points from that step on.
        self.writer = SummaryWriter(str(self.dir), purge_step=after_step + 1 if after_step else None)
        return None

    def log_params(self, params: dict[str, Any], *, resumed_from: Optional[int]) -> None:
        pass  # plan/plan.json holds them beside the event files

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_artifact(self, path: Path, folder: str) -> None:
        pass  # the files are in RUN_DIR already

    def finish(self, status: str, step: int) -> None:
        self.writer.close()


class MLflow:
    """MLflow through its client: MLFLOW_TRACKING_URI when set, else a file store in
    RUN_DIR/mlruns (`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN_DIR/mlruns`)."""
    name = "mlflow"

    def __init__(self, rd: Any, experiment: str, run_name: str):
        self.rd, self.experiment, self.run_name = rd, experiment, run_name
        self.client = self.run_id = None

    def start(self, run_id: Optional[str], *, after_step: int) -> Optional[str]:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = str(self.rd.root / "mlruns")
            # MLflow 3.7+ refuses a file store unless told it is wanted; for one run's own
            # metrics, plain files on the shared filesystem beat an SQLite file on NFS.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # MLflow retries a failing request 7 times with backoff (minutes): fail sooner, once.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.client = MlflowClient(tracking_uri=uri)
        if run_id:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
                return run_id
            except MlflowException as err:
                log.warning("MLflow run %s of this run's checkpoint is not at %s (%s); "
                            "starting a new MLflow run", run_id, uri, err)
        experiment = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.experiment))
        run = self.client.create_run(experiment_id, run_name=self.run_name,
                                     tags={"launcher.run_dir": str(self.rd.root),
                                           **({"launcher.continues": run_id} if run_id else {})})
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any], *, resumed_from: Optional[int]) -> None:
        from mlflow.entities import Param, RunTag

        params = {k: _clip(v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()}
        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in have]
        # A param never changes in MLflow; what a resume changed (say the world size) is
        # kept as a tag of the step it changed at.
        tags = [RunTag(f"resumed_at_step_{resumed_from}.{k}", v)
                for k, v in params.items() if k in have and have[k] != v]
        for i in range(0, max(len(new), len(tags)), _MLFLOW_BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=new[i:i + _MLFLOW_BATCH_PARAMS],
                                  tags=tags[i:i + _MLFLOW_BATCH_PARAMS])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()]
        for i in range(0, len(points), _MLFLOW_BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=points[i:i + _MLFLOW_BATCH_METRICS])

    def log_artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def finish(self, status: str, step: int) -> None:
        if status == "preempted":
            self.client.set_tag(self.run_id, "launcher.preempted_at_step", str(step))
        self.client.set_terminated(self.run_id, status=_STATUS[status])


def _clip(value: str) -> str:
    if len(value) <= _MLFLOW_PARAM_CHARS:
        return value
    note = f"... ({len(value)} chars, see plan/plan.json)"
    return value[:_MLFLOW_PARAM_CHARS - len(note)] + note


def _mlflow_key(key: str) -> str:
    # MLflow takes letters, digits, '_', '-', '.', ' ', ':' and '/' in a metric name; label
    # names (per-class metrics) may hold anything.
    return re.sub(r"[^\w\-. :/]", "_", key)


class WandB:
    """W&B online when WANDB_API_KEY (or WANDB_MODE=online) says so, else offline in
    RUN_DIR/wandb (`wandb sync RUN_DIR/wandb/offline-run-*` uploads it later)."""
    name = "wandb"

    def __init__(self, rd: Any, project: str, run_name: str):
        self.rd, self.project, self.run_name = rd, project, run_name
        self.run = None

    def start(self, run_id: Optional[str], *, after_step: int) -> Optional[str]:
        if not os.environ.get("WANDB_API_KEY"):
            os.environ.setdefault("WANDB_MODE", "offline")
        import wandb

        # console="off": W&B would otherwise wrap stdout, and the progress bar with it.
        self.run = wandb.init(dir=str(self.rd.root), project=os.environ.get("WANDB_PROJECT",
                                                                            self.project),
                              name=self.run_name, id=run_id, resume="allow" if run_id else None,
                              settings=wandb.Settings(console="off", quiet=True))
        return self.run.id

    def log_params(self, params: dict[str, Any], *, resumed_from: Optional[int]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        # The training step is W&B's step: eval numbers of a step join its training row, and
        # an offline resume (a new offline-run-* directory) goes on from the right step.
        self.run.log(metrics, step=step)

    def log_artifact(self, path: Path, folder: str) -> None:
        # A copy in the run's files/ (not the link W&B would make, warning each time): the
        # offline run directory is whole on its own, for a `wandb sync` from anywhere.
        files = Path(self.run.dir)
        copy = files / folder / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        self.run.save(str(copy), base_path=str(files), policy="now", glob=False)

    def finish(self, status: str, step: int) -> None:
        if status == "preempted":
            self.run.mark_preempting()
        self.run.finish(exit_code={"finished": 0, "preempted": 75, "failed": 1}[status])


def build(names: tuple[str, ...], rd: Any, name: str) -> list:
    makers: dict[str, Callable[[], Any]] = {
        "tensorboard": lambda: TensorBoard(rd),
        "mlflow": lambda: MLflow(rd, os.environ.get("MLFLOW_EXPERIMENT_NAME", name),
                                 rd.root.name),
        "wandb": lambda: WandB(rd, name, rd.root.name),
    }
    return [makers[n]() for n in dict.fromkeys(names)]


class Trackers:
    """Every call goes to every live tracker; one that fails is warned about once and dropped."""

    def __init__(self, trackers: list, warn: Callable[[str], None]):
        self.live, self.warn = list(trackers), warn
        self.ids: dict[str, str] = {}

    def _each(self, what: str, call: Callable[[Any], Any]) -> None:
        for tracker in list(self.live):
            try:
                call(tracker)
            except Exception as err:  # a tracker is never worth the training run
                self.live.remove(tracker)
                text = " ".join(f"{type(err).__name__}: {err}".split())[:500]
                log.warning("%s failed in %s: %s; training goes on without it", tracker.name,
                            what, text)
                self.warn(f"{tracker.name} failed ({text}); training goes on without it "
                          "(metrics.jsonl has every number)")

    def start(self, ids: dict[str, str], *, after_step: int) -> None:
        # A tracker that fails now keeps its id for the next attempt's checkpoint.
        self.ids = {t.name: ids[t.name] for t in self.live if ids.get(t.name)}

        def start(tracker: Any) -> None:
            new = tracker.start(ids.get(tracker.name), after_step=after_step)
            if new:
                self.ids[tracker.name] = new
        self._each("start", start)

    def log_params(self, params: dict[str, Any], *, resumed_from: Optional[int]) -> None:
        self._each("log_params", lambda t: t.log_params(params, resumed_from=resumed_from))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._each("log_metrics", lambda t: t.log_metrics(metrics, step))

    def log_artifact(self, path: Path, folder: str = "") -> None:
        if path.is_file():
            self._each("log_artifact", lambda t: t.log_artifact(path, folder))

    def finish(self, status: str, step: int) -> None:
        self._each("finish", lambda t: t.finish(status, step))
        self.live = []
