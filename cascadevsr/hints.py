"""Type checks for config values loaded from YAML/JSON against dataclass type hints."""

from __future__ import annotations

import types
import typing
from typing import Any


def value_matches_hint(value: Any, hint: Any) -> bool:
    """Whether a config value loaded from YAML/JSON fits a dataclass field's type hint (lists stand for
    tuples; ints for floats; bools are not numbers)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return isinstance(value, list | tuple)
    if origin is dict:
        return isinstance(value, dict)
    if origin in (typing.Union, types.UnionType):
        return any(value_matches_hint(value, h) for h in typing.get_args(hint))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
