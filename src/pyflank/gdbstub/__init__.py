"""A gdb remote stub for guests on the software CPU (``Vm(gdb=PORT)``): see ``server``."""

from pyflank.gdbstub.server import GdbStub, loopback
from pyflank.gdbstub.target import TARGET_XML

__all__ = ["TARGET_XML", "GdbStub", "loopback"]
