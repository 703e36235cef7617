"""The state of a graph of plain Python objects (the platform's devices, a handler), as data
that can be written out and put back into another graph built the same way.

Devices keep their state in attributes of plain values: numbers, strings, bytes, enums,
frozen dataclasses, and lists, tuples, dicts, sets and deques of them.  ``capture`` walks
the objects reachable from its roots (through attributes, and lists, tuples and dicts of
objects) and notes every plain attribute by its path (``0.pic.master.irr``); references
between the objects are walked once, where first met.  ``load`` walks the other graph the
same way and sets each noted attribute: two platforms built by the same code meet their
objects in the same order.  Functions, locks, files and other outside things are left
alone; a ``threading.Event`` (the platform's "input arrived") keeps whether it is set.

Objects are walked when their class is pyflank's, or of a module the caller names (a
user's handler); anything else is reported in ``notes`` and not saved.

``encode``/``decode`` turn plain values into JSON and back; a value's class is named in
the document only for pyflank's own enums and dataclasses, the only classes ``decode``
makes (a snapshot file is data, never code to run).
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import Any

_PRIMITIVES = (type(None), bool, int, float, str, bytes, bytearray)
_OWN = "pyflank."
Path = str


class StateError(ValueError):
    """A saved state that does not fit the objects it is loaded into."""


def _is_plain(value: object) -> bool:
    if isinstance(value, _PRIMITIVES):
        return True
    if isinstance(value, Enum):
        return type(value).__module__.startswith(_OWN)  # (``decode`` makes pyflank's only)
    if isinstance(value, list | tuple | set | frozenset | deque):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        params = getattr(type(value), "__dataclass_params__", None)
        own = type(value).__module__.startswith(_OWN)
        return (
            own
            and bool(params and params.frozen)
            and all(_is_plain(getattr(value, field.name)) for field in dataclasses.fields(value))
        )
    return False


def _attributes(obj: object) -> Iterator[tuple[str, Any]]:
    seen: set[str] = set()
    for name, value in getattr(obj, "__dict__", {}).items():
        seen.add(name)
        yield name, value
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name not in seen and name != "__weakref__" and hasattr(obj, name):
                seen.add(name)
                yield name, getattr(obj, name)


class _Walk:
    def __init__(self, modules: Sequence[str], skip: frozenset[str]) -> None:
        self.modules = tuple(modules)
        self.skip = skip
        self.visited: set[int] = set()
        self.notes: list[str] = []

    def walkable(self, value: object) -> bool:
        module = type(value).__module__
        if not (hasattr(value, "__dict__") or hasattr(type(value), "__slots__")):
            return False
        if isinstance(value, type) or callable(value):
            return False
        return module.startswith(_OWN) or module in self.modules

    def objects(self, roots: Sequence[object]) -> Iterator[tuple[Path, object, str, Any]]:
        """(path, object, attribute, value) of every attribute, depth first, once each."""
        for index, root in enumerate(roots):
            yield from self._object(str(index), root)

    def _object(self, path: Path, obj: object) -> Iterator[tuple[Path, object, str, Any]]:
        if id(obj) in self.visited:
            return
        self.visited.add(id(obj))
        for name, value in _attributes(obj):
            if name in self.skip and path.count(".") == 0:
                continue
            yield path, obj, name, value
            yield from self._inside(f"{path}.{name}", value)

    def _inside(self, path: Path, value: object) -> Iterator[tuple[Path, object, str, Any]]:
        if _is_plain(value) or isinstance(value, threading.Event):
            return
        if self.walkable(value):
            yield from self._object(path, value)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                yield from self._inside(f"{path}[{index}]", item)
        elif isinstance(value, dict):
            for key, item in value.items():
                if _is_plain(key):
                    yield from self._inside(f"{path}[{key!r}]", item)


def capture(
    roots: Sequence[object], *, modules: Sequence[str] = (), skip: frozenset[str] = frozenset()
) -> tuple[dict[Path, Any], list[str]]:
    """The plain attributes reachable from ``roots`` (encoded), and notes on what was left
    out.  ``skip``: attribute names of the roots not to walk."""
    walk = _Walk(modules, skip)
    state: dict[Path, Any] = {}
    for path, _obj, name, value in walk.objects(roots):
        key = f"{path}.{name}"
        if isinstance(value, threading.Event):
            state[key] = {"$event": value.is_set()}
        elif _is_plain(value):
            state[key] = encode(value)
        elif not (
            callable(value)
            or walk.walkable(value)
            or isinstance(value, list | tuple | dict)
            or _outside(value)
        ):
            walk.notes.append(f"{key} ({type(value).__name__}) is not saved")
    return state, walk.notes


def load(
    roots: Sequence[object],
    state: dict[Path, Any],
    *,
    modules: Sequence[str] = (),
    skip: frozenset[str] = frozenset(),
) -> None:
    """Set the attributes ``state`` notes in the graph of ``roots``; ``StateError`` for
    one that has no counterpart there."""
    walk = _Walk(modules, skip)
    left = dict(state)
    for path, obj, name, value in walk.objects(roots):
        key = f"{path}.{name}"
        if key not in left:
            continue
        saved = left.pop(key)
        if isinstance(value, threading.Event):
            (value.set if saved.get("$event") else value.clear)()
            continue
        decoded = decode(saved)
        if type(decoded) is type(value) and decoded == value:
            continue
        try:
            setattr(obj, name, decoded)
        except AttributeError:  # (a frozen dataclass: a placement on the bus, ...)
            raise StateError(f"{key} differs here and cannot be changed") from None
    if left:
        first = sorted(left)[0]
        raise StateError(f"the saved state has {first}, which these objects do not have "
                         f"({len(left)} such)")  # fmt: skip


def _outside(value: object) -> bool:
    """Things that are not state of the objects (locks, memory, files, ctypes)."""
    module = type(value).__module__
    return module in ("_thread", "threading", "_io", "io", "socket", "mmap", "_ctypes")


# -- plain values as JSON -------------------------------------------------------------------
def encode(value: Any) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, Enum):
        return {"$enum": _class_name(type(value)), "value": encode(value.value)}
    if isinstance(value, bytearray):
        return {"$bytearray": value.hex()}
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, deque):
        return {"$deque": [encode(v) for v in value], "maxlen": value.maxlen}
    if isinstance(value, frozenset | set):
        kind = "$frozenset" if isinstance(value, frozenset) else "$set"
        return {kind: [encode(v) for v in sorted(value, key=repr)]}
    if isinstance(value, dict):
        return {"$dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: encode(getattr(value, field.name)) for field in
                  dataclasses.fields(value)}  # fmt: skip
        return {"$dataclass": _class_name(type(value)), "fields": fields}
    raise TypeError(f"not a plain value: {type(value).__name__}")


def decode(data: Any) -> Any:
    if not isinstance(data, dict | list):
        return data
    if isinstance(data, list):
        return [decode(v) for v in data]
    if "$tuple" in data:
        return tuple(decode(v) for v in data["$tuple"])
    if "$bytes" in data:
        return bytes.fromhex(data["$bytes"])
    if "$bytearray" in data:
        return bytearray.fromhex(data["$bytearray"])
    if "$deque" in data:
        return deque((decode(v) for v in data["$deque"]), data.get("maxlen"))
    if "$set" in data:
        return {decode(v) for v in data["$set"]}
    if "$frozenset" in data:
        return frozenset(decode(v) for v in data["$frozenset"])
    if "$dict" in data:
        return {decode(k): decode(v) for k, v in data["$dict"]}
    if "$enum" in data:
        cls = _own_class(data["$enum"], lambda c: issubclass(c, Enum))
        return cls(decode(data["value"]))
    if "$dataclass" in data:
        cls = _own_class(data["$dataclass"], dataclasses.is_dataclass)
        return cls(**{name: decode(v) for name, v in data["fields"].items()})
    raise StateError(f"not a saved value: {sorted(data)[:3]}")


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _own_class(name: object, kind: Callable[[type], bool]) -> Any:
    """pyflank's class ``module:Qualname``, if it is of ``kind``."""
    if not isinstance(name, str) or ":" not in name or not name.startswith(_OWN):
        raise StateError(f"a saved value names {name!r}, which is not pyflank's")
    module_name, qualname = name.split(":", 1)
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        raise StateError(f"a saved value names {name!r}, which this pyflank has not") from None
    if not isinstance(target, type) or not kind(target):
        raise StateError(f"a saved value names {name!r}, which is no enum or dataclass")
    return target
