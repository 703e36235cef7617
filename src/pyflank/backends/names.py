"""The backends' names, in a module of their own so that bfm can offer them without
importing an engine."""

from __future__ import annotations

from typing import Final

ENGINES: Final = ("emu", "kvm")
AUTO: Final = "emu"  # what "auto" stands for in Python: the software CPU, which needs nothing
NAMES: Final = (*ENGINES, "auto")
