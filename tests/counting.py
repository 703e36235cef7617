"""Bareflank's exit-counting example, ported the obvious way (count in ``handle_exit``):
the user's handler that several tests run unchanged, under observers or on odd engines."""

from __future__ import annotations

from pyflank.exit_handler import ExitHandlerIntelX64


class CountingExits(ExitHandlerIntelX64):
    """Counts every exit it handles by basic reason, in ``counts``; a mixin in front of
    another handler (``class C(CountingExits, Other)``) counts that one's exits."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[int, int] = {}

    def handle_exit(self, reason: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        super().handle_exit(reason)
