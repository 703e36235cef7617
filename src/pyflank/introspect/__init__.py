"""Introspection of a running guest operating system from its exit handler: Linux's symbols
(its own kallsyms tables), structure layouts (its BTF), the current task, system calls."""

from pyflank.introspect.btf import Btf, BtfError
from pyflank.introspect.kallsyms import KallsymsNotFound, KernelSymbols, Symbol, read_symbols
from pyflank.introspect.linux import LinuxGuest, SystemCall, Task, TaskLayout, per_cpu_base

__all__ = [
    "Btf",
    "BtfError",
    "KallsymsNotFound",
    "KernelSymbols",
    "LinuxGuest",
    "Symbol",
    "SystemCall",
    "Task",
    "TaskLayout",
    "per_cpu_base",
    "read_symbols",
]
