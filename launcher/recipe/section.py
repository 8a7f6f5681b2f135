"""The building block of a recipe: a frozen, keyword-only dataclass whose fields carry docs.

A misspelled keyword in a recipe file must name the field and suggest the right one, not
surface as Python's "unexpected keyword argument" traceback, so `section` wraps `__init__`.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from launcher.errors import RecipeError

# Filled by launcher.recipe.schema: section class -> its dotted path in the recipe tree.
SECTION_PATHS: dict[type, str] = {}


def option(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None) -> Any:
    """A recipe field with its help text (shown by `--explain` and the README)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"valid names: {', '.join(choices)}"


def section(cls: type) -> type:
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    generated_init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]
    aliases: dict[str, tuple[str, Any]] = getattr(cls, "ALIASES", {})

    def __init__(self, **kwargs: Any) -> None:
        prefix = SECTION_PATHS.get(cls, cls.__name__)
        for key in kwargs:
            if key not in names and key not in aliases:
                raise RecipeError(
                    f"{prefix}.{key}",
                    f"{cls.__name__} has no field '{key}'",
                    f"remove it or rename it ({suggest(key, names)})",
                )
        kwargs = resolve_aliases(prefix, kwargs, aliases)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise RecipeError(f"{prefix}.{missing[0]}", "is required but not set",
                              f"pass {missing[0]}=... to {cls.__name__}")
        generated_init(self, **kwargs)
        # Which fields the author wrote, so --explain can tell "recipe file" from "default".
        object.__setattr__(self, "_explicit", frozenset(kwargs))

    cls.__init__ = __init__
    return cls


def resolve_aliases(prefix: str, kwargs: dict[str, Any],
                    aliases: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Turn HF-Trainer-style booleans (`bf16=True`) into the one field they stand for.

    Two aliases switched on for the same field (fp16 and bf16 both on) is an error, as is an
    alias that disagrees with the field set explicitly.
    """
    chosen: dict[str, tuple[str, Any]] = {}
    out = {k: v for k, v in kwargs.items() if k not in aliases}
    for key in kwargs:
        if key not in aliases:
            continue
        value = kwargs[key]
        if not isinstance(value, bool):
            raise RecipeError(f"{prefix}.{key}", f"must be true or false, got {value!r}",
                              f"write {key}=True or {key}=False")
        if not value:
            continue
        target, meaning = aliases[key]
        if target in chosen:
            other = chosen[target][0]
            raise RecipeError(f"{prefix}.{key}", f"{other} and {key} are both on",
                              f"keep one, or say {prefix}.{target}='{meaning}' instead")
        if target in out and out[target] != meaning:
            raise RecipeError(f"{prefix}.{key}",
                              f"is on but {prefix}.{target} is '{out[target]}'",
                              f"drop {key} or set {target}='{meaning}'")
        chosen[target] = (key, meaning)
        out[target] = meaning
    return out

