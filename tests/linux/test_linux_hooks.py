"""The EPT examples on Debian's kernel: examples/syscall_trace.py (an execute hook on the
kernel's SYSCALL entry, with the kernel's own symbols, BTF and current task) and
examples/write_watch.py (a write hook on /init's stack page).  The short versions (in
``make test``) take the hooks off after the first calls and writes; the whole boots are
``slow``.

/init itself is started by the kernel (``kernel_execve`` from ``kernel_init``, a call, not
a SYSCALL), so the trace sees the execve system calls /init makes: of ``/bin/mount`` in
the children it forks, and of ``/bin/pyflank-poweroff`` at its end."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from linux_runs import boot_to_power_off

from example_modules import example
from pyflank.exit_handler import EptAccess, ExitHandlerIntelX64
from pyflank.introspect import KernelSymbols, LinuxGuest, SystemCall
from pyflank.memory import GuestLinear
from pyflank.platform.linux.assets import LinuxAssets
from pyflank.platform.linux.initramfs import MARKER
from pyflank.vmm import VcpuResult

# Linux's x86-64 system-call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
NUMBERS = {0: "read", 1: "write", 12: "brk", 59: "execve", 61: "wait4", 158: "arch_prctl",
           165: "mount", 173: "ioperm", 218: "set_tid_address", 231: "exit_group"}  # fmt: skip
USER_TOP = 1 << 47


def boot(assets: LinuxAssets, handler: type[ExitHandlerIntelX64]) -> tuple[VcpuResult, str]:
    _, result, text = boot_to_power_off(assets, handler, timeout=600)
    assert f"{MARKER} uptime" in text
    return result, text


def tracer(limit: int | None) -> tuple[ModuleType, type[ExitHandlerIntelX64]]:
    """The example's SyscallTrace, keeping what execve and write name (the path, the bytes)
    and, with ``limit``, taking its hook off after that many calls."""
    module = example("syscall_trace")

    class Tracing(module.SyscallTrace):  # type: ignore[name-defined,misc]
        texts: list[tuple[SystemCall, bytes]] = []
        given: list[SystemCall] = []

        def entered(self, access: EptAccess) -> None:
            before = len(self.calls)
            super().entered(access)
            if len(self.calls) == before:
                return
            call, view = self.calls[-1], self.linux.kernel_view(self)
            if len(self.calls) == 1:  # the same call, from a System.map and given offsets
                Tracing.given.append(given_introspection(self, view).system_call(self))
            if call.name == "execve":
                path = self.linux.read_string(view, call.arguments[0]).encode()
                Tracing.texts.append((call, path))
            elif call.name == "write":
                buffer, size = call.arguments[1], min(call.arguments[2], 80)
                data = view.read_available(buffer, size, execute=False)
                Tracing.texts.append((call, data))
            if len(self.calls) == limit:
                self.unhook(self.memory_hooks[0])

    return module, Tracing


def given_introspection(handler: Any, view: GuestLinear) -> LinuxGuest:
    """A LinuxGuest told its symbols (a System.map written from kallsyms) and offsets."""
    linux = handler.linux
    system_map = "\n".join(f"{s.address:016x} {s.type} {s.name}" for s in linux.symbols)
    symbols = KernelSymbols.from_system_map(system_map)
    return LinuxGuest(handler.m_memory, symbols=symbols, task_layout=linux.task_layout(view))


def check_calls(calls: list[SystemCall]) -> None:
    for call in calls:
        assert call.name == NUMBERS.get(call.number, call.name), call
        assert call.name != str(call.number), call  # every number named from sys_call_table
        assert call.task.pid > 0 and call.task.name, call


def test_the_syscall_trace_names_inits_first_system_calls(linux_assets: LinuxAssets) -> None:
    module, tracing = tracer(limit=12)
    boot(linux_assets, tracing)
    calls = module.SyscallTrace.calls
    assert len(calls) == 12
    check_calls(calls)
    assert {(call.task.name, call.task.pid) for call in calls} == {("init", 1)}
    assert {"brk", "arch_prctl", "set_tid_address"} <= {call.name for call in calls}
    assert tracing.given == calls[:1]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_syscall_trace_sees_every_system_call_of_the_boot(linux_assets: LinuxAssets) -> None:
    module, tracing = tracer(limit=None)
    boot(linux_assets, tracing)
    calls = module.SyscallTrace.calls
    check_calls(calls)
    assert len(calls) > 300
    texts = [(call.name, call.task.name, call.task.pid, text) for call, text in tracing.texts]
    assert ("execve", "init", 1, b"/bin/pyflank-poweroff") in texts
    assert any(name == "execve" and pid > 1 and path == b"/bin/mount"
               for name, _, pid, path in texts)  # fmt: skip
    marker = [t for t in texts if t[0] == "write" and t[3].startswith(f"{MARKER} uptime".encode())]
    assert [(name, task, pid) for name, task, pid, _ in marker] == [("write", "init", 1)]
    assert marker[0] in texts[: texts.index(("execve", "init", 1, b"/bin/pyflank-poweroff"))]
    # The last calls are the power-off program's (its name cut to TASK_COMM_LEN - 1).
    assert (calls[-1].task.name, calls[-1].name) == ("pyflank-powerof", "ioperm")


def watcher(limit: int | None) -> tuple[ModuleType, type[ExitHandlerIntelX64]]:
    module = example("write_watch")

    class Watching(module.WriteWatch):  # type: ignore[name-defined,misc]
        def wrote(self, access: EptAccess) -> None:
            super().wrote(access)
            if len(self.writes) == limit:
                self.unhook(self.watched)

    return module, Watching


def test_the_write_watch_reports_inits_first_stack_writes(linux_assets: LinuxAssets) -> None:
    module, watching = watcher(limit=200)
    boot(linux_assets, watching)
    writes = module.WriteWatch.writes
    assert len(writes) == 200
    assert len({address >> 12 for address, _, _ in writes}) == 1  # one page of /init's stack
    assert all(address < USER_TOP and rip < USER_TOP for address, _, rip in writes)
    # A CALL's write is its return address: the instruction after the CALL (rel32: 5 bytes).
    assert any(value == rip + 5 for _, value, rip in writes)


@pytest.mark.slow
def test_the_write_watch_follows_its_page_through_the_whole_boot(
    linux_assets: LinuxAssets,
) -> None:
    module, watching = watcher(limit=None)
    boot(linux_assets, watching)
    writes = module.WriteWatch.writes
    assert len(writes) > 1000
    assert any(rip >= USER_TOP for _, _, rip in writes)  # the kernel writes the page too
