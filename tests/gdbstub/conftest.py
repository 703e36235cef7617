"""The real gdb (``gdb_support``) for the stub's tests."""

from gdb_support import gdb_binary

__all__ = ["gdb_binary"]
