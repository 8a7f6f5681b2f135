"""The one error type a user sees for a bad recipe, override or flag."""

from __future__ import annotations


class RecipeError(ValueError):
    """A mistake in a recipe, an override or a CLI flag.

    Carries the dotted field, what is wrong and how to fix it, so the CLI can print one line
    and exit 2 before anything is written or submitted.
    """

    def __init__(self, field: str, problem: str, fix: str, *, source: str | None = None):
        self.field = field
        self.problem = problem
        self.fix = fix
        self.source = source
        super().__init__(self.one_line())

    def with_source(self, source: str) -> "RecipeError":
        return RecipeError(self.field, self.problem, self.fix, source=self.source or source)

    def one_line(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.field}: {self.problem}. Fix: {self.fix}"
