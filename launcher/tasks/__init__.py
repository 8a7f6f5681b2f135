"""The tasks the engine trains, by `task.type`."""

from __future__ import annotations

from launcher.recipe.schema import Recipe
from launcher.tasks.base import Task
from launcher.tasks.classify import SequenceClassification
from launcher.tasks.multilabel import MultiLabelClassification
from launcher.tasks.qa import QuestionAnswering
from launcher.tasks.tokens import TokenClassification

TASKS: dict[str, type[Task]] = {cls.type: cls for cls in (
    SequenceClassification, MultiLabelClassification, TokenClassification, QuestionAnswering)}


def for_recipe(recipe: Recipe) -> Task:
    return TASKS[recipe.task.type](recipe)


__all__ = ["TASKS", "Task", "for_recipe"]
