"""Finding the exit handler a user's extension names.

An extension is a Python file (``handler.py`` or ``handler.py:ClassName``), a
module (``pkg.mod`` or ``pkg.mod:ClassName``), or a ``.modules`` JSON file
listing several of those.  Several handlers compose hvpp-style: the composed
class inherits from all of them in order, so each override that calls
``super()`` runs before the next one's.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType

from pyflank.cli.errors import ExtensionError, UsageError
from pyflank.cli.files import read_input
from pyflank.cli.json_text import loads
from pyflank.exit_handler import ExitHandlerIntelX64

__all__ = ["ExtensionError", "compose", "load_handler", "load_modules_file"]

HandlerClass = type[ExitHandlerIntelX64]
_MAX_MODULES_FILE = 1 << 20


def _module_from_file(path: Path) -> ModuleType:
    try:
        if not path.exists():
            raise ExtensionError(f"no such extension file: {path}")
        if not path.is_file():
            raise ExtensionError(f"{path}: not a regular file")
        name = f"pyflank_extension_{abs(hash(str(path.resolve())))}"
    except OSError as exc:  # a name too long, a loop of links, ...
        raise ExtensionError(f"{path}: {exc.strerror or exc}") from None
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExtensionError(f"not a Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code: any failure
        del sys.modules[name]
        raise ExtensionError(f"{path}: {_describe(exc)}") from None
    return module


def _module(target: str) -> ModuleType:
    if target.endswith(".py") or "/" in target:
        return _module_from_file(Path(target))
    try:
        return importlib.import_module(target)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code: any failure
        raise ExtensionError(f"cannot import module {target}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, even when the exception's ``__str__`` is broken."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # noqa: BLE001 - the user's exception class
        text = "<__str__ raised>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _handlers_in(module: ModuleType) -> list[HandlerClass]:
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, ExitHandlerIntelX64)
        and obj is not ExitHandlerIntelX64
        and obj.__module__ == module.__name__
    ]


def load_handler(spec: str, _loading: frozenset[Path] = frozenset()) -> HandlerClass:
    """The one exit handler class ``spec`` names."""
    if spec.endswith(".modules"):
        return load_modules_file(Path(spec), _loading)
    target, _, class_name = spec.partition(":")
    if not target:
        raise ExtensionError(f"{spec!r} names no extension")
    module = _module(target)
    if class_name:
        cls = getattr(module, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, ExitHandlerIntelX64)):
            raise ExtensionError(f"{target} has no ExitHandlerIntelX64 subclass {class_name}")
        return cls
    found = _handlers_in(module)
    if not found:
        raise ExtensionError(f"{target} defines no ExitHandlerIntelX64 subclass")
    if len(found) > 1:
        names = ", ".join(c.__name__ for c in found)
        raise ExtensionError(f"{target} defines several handlers ({names}): use {target}:Name")
    return found[0]


def load_modules_file(path: Path, _loading: frozenset[Path] = frozenset()) -> HandlerClass:
    """A ``.modules`` file: ``{"modules": ["a.py", "pkg.mod:Name", ...]}``, paths relative to it."""
    try:
        resolved = path.resolve()
    except OSError as exc:
        raise ExtensionError(f"{path}: {exc.strerror or exc}") from None
    if resolved in _loading:
        raise ExtensionError(f"{path}: includes itself")
    try:
        document = loads(read_input(path, _MAX_MODULES_FILE))
    except UsageError as exc:
        raise ExtensionError(str(exc)) from None
    except ValueError as exc:
        raise ExtensionError(f"{path}: not JSON ({_json_problem(exc)})") from None
    modules = document.get("modules") if isinstance(document, dict) else None
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        raise ExtensionError(f'{path}: expected {{"modules": ["extension", ...]}}')
    base = path.parent
    classes = []
    for entry in modules:
        target, sep, name = entry.partition(":")
        if target.endswith((".py", ".modules")) and not Path(target).is_absolute():
            entry = str(base / target) + sep + name
        classes.append(load_handler(entry, _loading | {resolved}))
    return compose(classes)


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}"
    return str(exc)


def compose(classes: list[HandlerClass]) -> HandlerClass:
    if len(classes) == 1:
        return classes[0]
    try:
        composed = type("ComposedHandler", tuple(classes), {})
    except TypeError as exc:
        raise ExtensionError(f"these handlers cannot be composed: {exc}") from exc
    return composed
