"""Recipes: what a user declares. `from launcher.recipe import Recipe, ModelConfig, ...`."""

from launcher.recipe.schema import (CheckpointConfig, DataConfig, EvalConfig, ModelConfig,
                                    OptimConfig, Recipe, RunConfig, ScaleConfig, SlurmConfig,
                                    TaskConfig)

__all__ = ["CheckpointConfig", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig",
           "Recipe", "RunConfig", "ScaleConfig", "SlurmConfig", "TaskConfig"]
