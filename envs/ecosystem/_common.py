"""What the ecosystem adapters share: loading "module:attr" entry points and JSON-safe info."""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from typing import Any


def load_object(path: str) -> Any:
    """The object named "package.module:attr" (attr may be dotted). ValueError names a bad path."""
    module_name, sep, attr = str(path).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entry point {path!r} must read 'package.module:attr'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"entry point {path!r}: cannot import {module_name!r}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"entry point {path!r}: {module_name!r} has no attribute {attr!r}") from None
    return obj


def jsonable(value: Any, depth: int = 0) -> Any:
    """`value` as plain JSON data: mappings get str keys, numpy scalars and arrays become numbers and
    lists, non-finite floats and anything else become strings (third-party info dicts carry all of these)."""
    if depth > 20:
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist(), depth + 1)
    if hasattr(value, "model_dump"):  # pydantic models
        return jsonable(value.model_dump(), depth + 1)
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def as_float(value: Any, what: str) -> float:
    """A third-party reward as a finite float; TypeError/ValueError names where it came from."""
    try:
        out = float(value if value is not None else 0.0)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}: {value!r:.100}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {out}")
    return out
