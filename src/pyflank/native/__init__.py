"""The optional native accelerator: the exit paths of both engines in C (``_accel``).

``pip install`` builds the extension where a C compiler and the Python headers exist; where
they do not, the install goes on without it and every engine runs its pure-Python exit
path, which stays the reference (the same exits, registers and memory; tests compare the
two).  ``PYFLANK_NATIVE=0`` in the environment forces the pure-Python path; ``status()``
says which path runs and why.

Nothing here imports the rest of pyflank: the engines hand the extension what it needs
(addresses, layouts, Python callables) and keep the decisions that are not hot.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sysconfig
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType

__all__ = ["DISABLE", "accelerator", "disabled", "status"]

NOTE = "_accel_build.txt"  # left by setup.py where the build failed: why
DISABLE = "PYFLANK_NATIVE"  # "0": use the pure-Python exit paths even where the extension exists

_module: ModuleType | None = None
_why = ""
try:
    _module = importlib.import_module("pyflank.native._accel")
except ImportError as exc:
    _why = str(exc)


def accelerator() -> ModuleType | None:
    """The extension module, or None where it is not built or ``PYFLANK_NATIVE=0``."""
    if os.environ.get(DISABLE, "1") == "0":
        return None
    return _module


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Engines made inside run the pure-Python exit paths (``PYFLANK_NATIVE=0``)."""
    saved = os.environ.get(DISABLE)
    os.environ[DISABLE] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[DISABLE]
        else:
            os.environ[DISABLE] = saved


def status() -> str:
    """One line: whether the accelerator runs, and if not, why."""
    if _module is not None:
        if os.environ.get(DISABLE, "1") == "0":
            return f"native accelerator: built, disabled by {DISABLE}=0"
        return f"native accelerator: in use ({Path(_module.__file__ or '').name})"
    return f"native accelerator: skipped ({_missing()}); the pure-Python exit paths run"


def _missing() -> str:
    """Why the extension is not there: the note the build left (setup.py), else a guess."""
    try:
        note = resources.files(__name__).joinpath(NOTE).read_text().strip()
    except OSError:
        note = ""
    if note:
        return note
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers})"
    return f"not built or not loadable ({_why})"
