"""A running Linux guest, seen from its exit handler: the kernel's symbols, the current task
(its name and pid) and the names of system calls -- the LibVMI/DRAKVUF view, in Python.

    linux = LinuxGuest(handler.m_memory)
    task = linux.current(handler)            # Task(name='init', pid=1, ...)
    linux.syscall_name(handler, 59)          # 'execve'
    linux.system_call(handler)               # at the SYSCALL entry: number, name, task

Everything comes from the kernel itself, so no file has to match the running kernel
(a kernel without kallsyms or BTF can be given a ``System.map`` and the offsets instead):
symbols from its kallsyms tables in guest RAM (``kallsyms``), the layout of
``struct task_struct`` from its BTF (``btf``, the ``.BTF`` section between
``__start_BTF`` and ``__stop_BTF``), a system call's name from the function
``sys_call_table`` points at (``__x64_sys_write`` is ``write``).  Guest-virtual memory is
read through the paging of the exit (``handler.guest_linear()``, the guest's CR3).

The current task is the per-CPU ``current_task`` (Linux 6.1; ``pcpu_hot.current_task``
since 6.2), read at the kernel's per-CPU base: GS's base in the kernel, or
IA32_KERNEL_GS_BASE while GS is the user's (at the SYSCALL entry, before SWAPGS).
Kernel memory is read through the kernel's page tables: with page-table isolation (on
wherever the CPU reports Meltdown, as pyflank's Intel model does) a user-mode exit's CR3
is the user copy, the kernel's table plus 4 KiB, which maps next to nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.msrs import IA32_KERNEL_GS_BASE
from pyflank.introspect.btf import Btf
from pyflank.introspect.kallsyms import KernelSymbols, read_symbols
from pyflank.memory import GuestLinear, GuestPhysicalMemory, PageFault

if TYPE_CHECKING:
    from pyflank.exit_handler import ExitHandlerIntelX64

_SYSCALL_PREFIXES = ("__x64_sys_", "__ia32_sys_", "__se_sys_", "__do_sys_", "sys_")
_SYSCALL_ARGUMENTS = ("rdi", "rsi", "rdx", "r10", "r08", "r09")  # the x86-64 syscall ABI
_COMM_LENGTH = 16  # TASK_COMM_LEN
_PTI_USER_TABLE = 1 << 12  # PTI: the user copy of a PGD is the next page


@dataclass(frozen=True)
class Task:
    """A ``struct task_struct``: where it is, its ``comm`` and its ids."""

    address: int
    name: str
    pid: int
    tgid: int


@dataclass(frozen=True)
class SystemCall:
    """A 64-bit system call as it enters the kernel: its number and name, the task making
    it, and its six arguments (RDI, RSI, RDX, R10, R8, R9)."""

    number: int
    name: str
    task: Task
    arguments: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.task.name}[{self.task.pid}]: {self.name} ({self.number})"


@dataclass(frozen=True)
class TaskLayout:
    """Byte offsets in ``struct task_struct`` (from BTF)."""

    comm: int
    pid: int
    tgid: int


def kernel_address(address: int) -> bool:
    """In the upper half of the address space, where the kernel lives."""
    return address >> 47 == 0x1_FFFF


class LinuxGuest:
    """The Linux kernel in ``memory``; what it learns (symbols, layouts) is kept."""

    def __init__(
        self,
        memory: GuestPhysicalMemory,
        *,
        symbols: KernelSymbols | None = None,
        task_layout: TaskLayout | None = None,
    ) -> None:
        """``symbols`` (e.g. ``KernelSymbols.from_system_map``) and ``task_layout`` (the
        offsets of ``comm``, ``pid`` and ``tgid`` in ``struct task_struct``, as ``pahole``
        prints them) replace what would be read from the kernel (kallsyms, BTF): for a
        kernel built without them."""
        self.memory = memory
        self._syscalls: dict[int, str] = {}
        self._btf: Btf | None = None
        self._task_layout: TaskLayout | None = task_layout
        if symbols is not None:
            self.__dict__["symbols"] = symbols  # what ``symbols`` would find and cache

    @cached_property
    def symbols(self) -> KernelSymbols:
        """The kernel's symbols (found, decoded and cached on first use)."""
        return read_symbols(self.memory)

    def btf(self, linear: GuestLinear) -> Btf:
        """The kernel's BTF, read from guest-virtual memory on first use."""
        if self._btf is None:
            start = self.symbols.address("__start_BTF")
            end = self.symbols.address("__stop_BTF")
            self._btf = Btf(linear.read(start, end - start))
        return self._btf

    def task_layout(self, linear: GuestLinear) -> TaskLayout:
        if self._task_layout is None:
            members = self.btf(linear).members("task_struct")
            comm, pid, tgid = (members[name].offset for name in ("comm", "pid", "tgid"))
            self._task_layout = TaskLayout(comm, pid, tgid)
        return self._task_layout

    # -- tasks --------------------------------------------------------------------------------
    def task(self, linear: GuestLinear, address: int) -> Task:
        """The task whose ``task_struct`` is at ``address``."""
        layout = self.task_layout(linear)
        raw = linear.read(address + layout.comm, _COMM_LENGTH)
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        pid = int.from_bytes(linear.read(address + layout.pid, 4), "little", signed=True)
        tgid = int.from_bytes(linear.read(address + layout.tgid, 4), "little", signed=True)
        return Task(address, name, pid, tgid)

    def current_task(self, linear: GuestLinear, per_cpu_base: int) -> int:
        """The address of the current task's ``task_struct`` on the CPU whose per-CPU area
        is at ``per_cpu_base``."""
        offset = self.symbols.get("current_task")
        if offset is None:  # Linux 6.2 and later
            hot = self.symbols.address("pcpu_hot")
            members = self.btf(linear).members("pcpu_hot")
            offset = hot + members["current_task"].offset
        return int.from_bytes(linear.read(per_cpu_base + offset, 8), "little")

    def kernel_view(self, handler: ExitHandlerIntelX64) -> GuestLinear:
        """Guest memory at this exit through the kernel's page tables (the CR3 without the
        user-copy bit, under page-table isolation), which map user space too."""
        linear = handler.guest_linear()
        if linear.paging and linear.cr3 & _PTI_USER_TABLE:
            try:
                linear.physical(self.symbols.address("init_task"))
            except PageFault:
                linear = GuestLinear(
                    linear.memory, paging=True, cr3=linear.cr3 & ~_PTI_USER_TABLE,
                    wp=linear.wp, nxe=linear.nxe,
                )  # fmt: skip
        return linear

    def current(self, handler: ExitHandlerIntelX64) -> Task:
        """The task running on ``handler``'s vCPU at this exit."""
        linear = self.kernel_view(handler)
        return self.task(linear, self.current_task(linear, per_cpu_base(handler)))

    # -- system calls ---------------------------------------------------------------------------
    def syscall_name(self, handler: ExitHandlerIntelX64, number: int) -> str:
        """The name of 64-bit system call ``number`` (its number as text where the table
        has no entry, as for numbers beyond it)."""
        name = self._syscalls.get(number)
        if name is None:
            name = self._syscall_name(self.kernel_view(handler), number)
            self._syscalls[number] = name
        return name

    def system_call(self, handler: ExitHandlerIntelX64) -> SystemCall:
        """The system call ``handler``'s vCPU is making, at an exit where it enters the
        kernel by SYSCALL (RIP at the address in IA32_LSTAR): RAX is its number."""
        state = handler.m_state_save
        number = state.rax
        arguments = tuple(getattr(state, name) for name in _SYSCALL_ARGUMENTS)
        name = self.syscall_name(handler, number)
        return SystemCall(number, name, self.current(handler), arguments)

    def _syscall_name(self, linear: GuestLinear, number: int) -> str:
        table = self.symbols.address("sys_call_table")
        limit = self.symbols.get("__NR_syscalls") or 0x800
        if not 0 <= number < limit:
            return str(number)
        target = int.from_bytes(linear.read(table + 8 * number, 8), "little")
        symbol = self.symbols.at(target)
        if symbol is None or symbol.address != target:
            return str(number)
        for prefix in _SYSCALL_PREFIXES:
            if symbol.name.startswith(prefix):
                return symbol.name[len(prefix) :]
        return symbol.name  # sys_ni_syscall and the like

    def read_string(self, linear: GuestLinear, address: int, limit: int = 256) -> str:
        """The NUL-terminated string at guest-virtual ``address`` (at most ``limit`` bytes)."""
        raw = linear.read_available(address, limit, execute=False)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def per_cpu_base(handler: ExitHandlerIntelX64) -> int:
    """The kernel's per-CPU base on ``handler``'s vCPU now: GS's base when it is the
    kernel's, else the one SWAPGS would bring in (IA32_KERNEL_GS_BASE)."""
    gs_base = handler.m_vmcs.read(f.GUEST_GS_BASE)
    if kernel_address(gs_base):
        return gs_base
    return handler.m_cpu.rdmsr(IA32_KERNEL_GS_BASE)
