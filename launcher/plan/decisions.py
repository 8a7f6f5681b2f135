"""What `launcher eval` and `launcher predict` may change in a finished run's plan.

Read by the CLI (launcher/trained.py, which checks before anything starts) and by the engine
(engine/eval_main.py), so it lives at the plan's level, below both.
"""

from __future__ import annotations

import dataclasses

from launcher import tasks
from launcher.errors import RecipeError
from launcher.plan.build import Plan

# What eval and predict may change: how outputs become answers, never the model.
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
