"""The benchmark sections ``make bench`` runs, in registration order."""

from __future__ import annotations

from collections.abc import Callable

Section = Callable[[], dict[str, float | str]]
SECTIONS: dict[str, Section] = {}


def register(name: str, section: Section) -> None:
    SECTIONS[name] = section
