"""What `launcher eval` and `predict` may change in a trained run's plan: how outputs become
answers, never the model. Here, below the engine, because the engine's eval applies them too."""

from __future__ import annotations

import dataclasses

from launcher import tasks
from launcher.errors import RecipeError
from launcher.plan.build import Plan

DECISIONS = ("task.null_threshold", "task.max_answer_length", "task.threshold")


def with_decisions(plan: Plan, overrides: list[str]) -> Plan:
    """The run's plan with `overrides` of DECISIONS applied (checked as at plan time)."""
    if not overrides:
        return plan
    from launcher.recipe.load import apply_overrides

    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in DECISIONS:
            raise RecipeError(key, "cannot be changed after training (eval and predict use "
                              "the trained model as it is)",
                              f"override only {', '.join(DECISIONS)}")
    recipe = apply_overrides(plan.recipe, list(overrides), {})
    tasks.for_recipe(recipe).validate()
    return dataclasses.replace(plan, recipe=recipe)
