"""Checking a field's value against its annotation, and parsing CLI strings into it.

Recipes use a small set of field types (int, float, str, bool, Optional, Literal, tuple, dict),
so a few lines here replace a schema library and give errors in the recipe's own words.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from launcher.errors import RecipeError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = " or ".join(describe(a) for a in args if a is not type(None))
        return inner + " or None" if type(None) in args else inner
    if origin is tuple:
        return f"a list of {describe(typing.get_args(tp)[0])}"
    if tp is dict or origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def check(path: str, tp: Any, value: Any) -> Any:
    """Return `value` normalised to `tp` (lists -> tuples, ints -> floats) or raise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _first_fit(path, tp, [a for a in args if a is not type(None)],
                          lambda alt: check(path, alt, value), repr(value))
    bad = RecipeError(path, f"must be {describe(tp)}, got {value!r}",
                      f"set {path} to {describe(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(check(path, typing.get_args(tp)[0], v) for v in value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _first_fit(path: str, tp: Any, alternatives: list, attempt, shown: str) -> Any:
    """The value as the first alternative of a Union it fits (e.g. 'balanced' or numbers)."""
    for alt in alternatives:
        try:
            return attempt(alt)
        except RecipeError:
            continue
    raise RecipeError(path, f"must be {describe(tp)}, got {shown}", f"set {path} to {describe(tp)}")


def parse(path: str, tp: Any, text: str) -> Any:
    """Parse an override's right-hand side (`optim.lr=3e-5`) as the field's type."""
    origin = typing.get_origin(tp)
    lowered = text.strip().lower()
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if lowered in _NONE and type(None) in args:
            return None
        return _first_fit(path, tp, [a for a in args if a is not type(None)],
                          lambda alt: parse(path, alt, text), f"'{text}'")
    bad = RecipeError(path, f"must be {describe(tp)}, got '{text}'",
                      f"write {path}=<{describe(tp)}>")
    if origin is Literal:
        return check(path, tp, text)
    if origin is tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        return tuple(parse(path, typing.get_args(tp)[0], t) for t in items)
    if tp is dict or origin is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise bad from None
        return check(path, tp, value)
    if tp is bool:
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise bad
    if tp in (int, float):
        try:
            number = float(text) if tp is float else int(text)
        except ValueError:
            raise bad from None
        return number
    return text
