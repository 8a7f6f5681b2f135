"""Whether a checkpoint can go on under a recipe and plan: the same model, the same data order,
the same global batch. Checked before launching (`launcher.resume`) and again by the engine,
which a requeued job reaches directly."""

from __future__ import annotations

from typing import Any


def fingerprint(recipe: Any, labels: tuple) -> dict[str, Any]:
    """What a checkpoint's weights are shaped by: another value means another model."""
    m = recipe.model
    return {"model.name": m.name, "task.type": recipe.task.type, "task.labels": list(labels),
            "model.head_hidden": m.head_hidden,
            "model.config_overrides": dict(sorted(dict(m.config_overrides).items()))}


def data_order(recipe: Any) -> dict[str, Any]:
    """What a saved data position means: under other values it would skip or repeat examples."""
    d = recipe.data
    return {"data.train": d.train, "data.streaming": d.streaming, "data.shuffle": d.shuffle,
            "data.shuffle_window": d.shuffle_window if d.streaming and d.shuffle else None,
            "run.seed": recipe.run.seed if d.shuffle else None}


def order_problems(state: dict[str, Any], recipe: Any) -> list[str]:
    saved = state.get("data_order")  # absent in checkpoints from before data.shuffle
    return [] if saved is None else differences(saved, data_order(recipe))


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{key} was {saved.get(key)!r}, the recipe now says {now.get(key)!r}"
            for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]


def incompatible(state: dict[str, Any], now: dict[str, Any], global_batch: int) -> list[str]:
    """Why a checkpoint cannot go on under this recipe and plan (empty: it can). Checked
    before launching and again by the engine, which a requeued job reaches directly."""
    problems = differences(state.get("fingerprint", {}), now)
    if state["global_batch"] != global_batch:
        # The data position is counted in global batches.
        problems.append(f"the global batch was {state['global_batch']} and the plan has "
                        f"{global_batch} (set scale.global_batch={state['global_batch']})")
    return problems
