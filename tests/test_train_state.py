"""The one state a checkpoint holds besides tensors (engine/train_state.py): every field
survives trainer_state.json, and a file an older launcher wrote loads with defaults."""

import dataclasses
import json

from launcher.checkpoint import compat
from launcher.engine.data import Position
from launcher.engine.train_state import Best, TrainState


def test_every_field_survives_a_save_and_a_load_and_an_older_file_loads_with_defaults():
    state = TrainState(
        step=12, position=Position(epoch=1, row=7, examples=40, window=2, offset=3, readers=2,
                                streams=[[[0, 1, 64, 2, 3]], [[1, 0, 0, 0, 7]]], micro=4),
        best=Best(step=10, metric="accuracy", value=0.75), evals_since_best=1,
        scheduler={"last_epoch": 12, "_step_count": 13}, scaler={"scale": 1024.0},
        log_window={"loss_sum": 2.5, "steps": 3}, trackers={"mlflow": "abc"},
        data_order={"data.train": "x.jsonl", "data.shuffle": True}, fingerprint={"model.name": "m"},
        world_size=2, global_batch=16, reason="preempted", saved_at=123.5)
    default = TrainState()
    unset = [f.name for f in dataclasses.fields(state)
             if getattr(state, f.name) == getattr(default, f.name)]
    assert not unset, f"give {unset} a value that is not the default, so its round trip counts"

    saved = json.loads(json.dumps(state.state_dict()))  # as trainer_state.json holds it
    assert TrainState.from_state_dict(saved) == state
    # what reads the file without torch (compat.py, the commands) finds the keys it reads
    assert saved["step"] == 12 and saved["epoch"] == 1 and saved["position"]["row"] == 7
    assert saved["best"] == {"step": 10, "metric": "accuracy", "value": 0.75}
    assert compat.incompatible(saved, {"model.name": "m"}, 16) == []
    assert compat.differences(saved["data_order"], state.data_order) == []

    # No evaluation yet: no best key, as before; the window of a run without readers
    fresh = TrainState(position=Position(epoch=0, row=3, examples=8)).state_dict()
    assert "best" not in fresh and fresh["position"] == {"epoch": 0, "row": 3, "examples": 8,
                                                         "window": 0, "offset": 0}
    assert TrainState.from_state_dict(json.loads(json.dumps(fresh))).best is None

    # An older launcher's file: no data order, trackers, best, window or readers
    old = {"step": 5, "epoch": 0, "position": {"epoch": 0, "row": 163, "examples": 160},
           "world_size": 1, "global_batch": 8, "reason": "signal", "fingerprint": {},
           "scheduler": {"last_epoch": 5}, "scaler": None, "saved_at": 0.0}
    loaded = TrainState.from_state_dict(old)
    assert (loaded.step, loaded.epoch, loaded.position) == (5, 0, Position(0, 163, 160))
    assert loaded.data_order is None and loaded.trackers is None and loaded.best is None
    assert loaded.position.streams is None  # a sharded stream's resume reads up to it again
    assert loaded.evals_since_best == 0 and loaded.log_window is None
    assert loaded.scheduler == {"last_epoch": 5} and loaded.world_size == 1
