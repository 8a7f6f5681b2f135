"""Reading a recipe file and applying `key=value` overrides from the command line."""

from __future__ import annotations

import dataclasses
import runpy
import traceback
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import RecipeError
from launcher.recipe import types as ftypes
from launcher.recipe.schema import SECTIONS, Recipe
from launcher.recipe.section import resolve_aliases, suggest


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    path: Path
    # dotted field -> "default" | "recipe file" | "CLI override"
    sources: dict[str, str]


def load(path: str | Path, overrides: list[str] = ()) -> LoadedRecipe:
    path = Path(path)
    recipe = _exec_recipe_file(path)
    try:
        recipe = normalise(recipe)
        sources = _sources_from_file(recipe)
        recipe = apply_overrides(recipe, list(overrides), sources)
    except RecipeError as err:
        raise err.with_source(str(path)) from None
    return LoadedRecipe(recipe=recipe, path=path, sources=sources)


def _exec_recipe_file(path: Path) -> Recipe:
    if not path.is_file():
        raise RecipeError("recipe", f"file {path} does not exist",
                          "pass the path of a recipe, e.g. recipes/tiny_news.py")
    try:
        namespace = runpy.run_path(str(path), run_name="__recipe__")
    except RecipeError as err:
        raise err.with_source(f"{path}:{_line_in(path, err)}") from None
    except SyntaxError as err:
        raise RecipeError("recipe", f"syntax error: {err.msg} (line {err.lineno})",
                          "correct the Python syntax at that line", source=str(path)) from None
    except Exception as err:  # the recipe is user code: report where it broke, in one line
        raise RecipeError("recipe", f"running the file raised {type(err).__name__}: {err} "
                          f"(line {_line_in(path, err)})", "correct the recipe file",
                          source=str(path)) from None
    recipe = namespace.get("recipe")
    if not isinstance(recipe, Recipe):
        raise RecipeError("recipe", "the file does not define `recipe = Recipe(...)`",
                          "end the file with recipe = Recipe(model=..., task=..., data=...)",
                          source=str(path))
    return recipe


def _line_in(path: Path, err: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
    return str(frames[-1].lineno) if frames else "?"


def normalise(recipe: Recipe) -> Recipe:
    """Type-check every field; turn lists into tuples and ints into floats where declared."""
    changes = {}
    for name, cls in SECTIONS.items():
        sec = getattr(recipe, name)
        if not isinstance(sec, cls):
            raise RecipeError(name, f"must be {cls.__name__}(...), got {type(sec).__name__}",
                              f"write {name}={cls.__name__}(...)")
        hints = typing.get_type_hints(cls)
        values = {f.name: ftypes.check(f"{name}.{f.name}", hints[f.name], getattr(sec, f.name))
                  for f in dataclasses.fields(cls)}
        explicit = sec._explicit
        fresh = cls(**values)
        object.__setattr__(fresh, "_explicit", explicit)
        changes[name] = fresh
    return dataclasses.replace(recipe, **changes)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Rebuild a recipe written to plan.json (the engine's side of the plan). A section a
    plan written by an older launcher lacks takes its defaults."""
    return normalise(Recipe(**{name: cls(**data[name]) if name in data else cls()
                               for name, cls in SECTIONS.items()}))


def _sources_from_file(recipe: Recipe) -> dict[str, str]:
    sources = {}
    for name in SECTIONS:
        sec = getattr(recipe, name)
        for f in dataclasses.fields(sec):
            sources[f"{name}.{f.name}"] = "recipe file" if f.name in sec._explicit else "default"
    return sources


def apply_overrides(recipe: Recipe, overrides: list[str], sources: dict[str, str]) -> Recipe:
    by_section: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(item, "is not an override of the form section.field=value",
                              "write e.g. optim.lr=3e-5")
        section_name, dot, field_name = key.partition(".")
        if section_name not in SECTIONS or not dot:
            raise RecipeError(key, f"unknown override key ('{section_name}' is not a section)",
                              f"use section.field where section is one of "
                              f"{', '.join(SECTIONS)} ({suggest(key, _all_keys())})")
        cls = SECTIONS[section_name]
        aliases = getattr(cls, "ALIASES", {})
        hints = typing.get_type_hints(cls)
        if field_name in aliases:
            value = ftypes.parse(key, bool, text)
        elif field_name in hints and field_name != "ALIASES":
            value = ftypes.parse(key, hints[field_name], text)
        else:
            raise RecipeError(key, "unknown override key",
                              f"use an existing field ({suggest(key, _all_keys())})")
        by_section.setdefault(section_name, {})[field_name] = value
    changes = {}
    for section_name, values in by_section.items():
        cls = SECTIONS[section_name]
        resolved = resolve_aliases(section_name, values, getattr(cls, "ALIASES", {}))
        for field_name in resolved:
            sources[f"{section_name}.{field_name}"] = "CLI override"
        changes[section_name] = dataclasses.replace(getattr(recipe, section_name), **resolved)
    return normalise(dataclasses.replace(recipe, **changes)) if changes else recipe


def _all_keys() -> list[str]:
    return [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
