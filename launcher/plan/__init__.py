"""Plans: recipe + CLI scale flags -> derived values and the rendered launch files."""

from launcher.plan.build import Plan, build
from launcher.plan.render import render, write

__all__ = ["Plan", "build", "render", "write"]
