"""JSON as bfm and its service write it: standard JSON only, ASCII on the wire."""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not standard JSON")


def loads(data: bytes | str) -> Any:
    """Standard JSON only; every failure (syntax, NaN, nesting, bad UTF-8) a ValueError."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps(value: Any) -> str:
    # ASCII on the wire: every string survives, lone surrogates included.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
