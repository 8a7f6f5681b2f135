"""The one error type a user sees for a bad recipe, override or flag."""

from __future__ import annotations

import re


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
        text = f"{where}{self.field}: {self.problem}. Fix: {self.fix}"
        # A value echoed back may hold a newline: the message stays one line.
        return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)
