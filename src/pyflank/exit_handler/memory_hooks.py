"""Memory hooks on guest-physical pages, the way DdiMon and hvpp hook: the EPT forbids the
hooked kind of access; at the violation the hook runs, the permission is lifted, the
monitor trap flag steps exactly the one instruction, and at the MTF exit the ``after``
callback runs (the access has happened: a write's value is in memory) and the
permission is restored.  The guest sees nothing but time passing.

An execute hook runs when execution enters its page (a jump from another page, a
SYSCALL, an interrupt): the execute permission is lifted and the guest is stepped with
the monitor trap flag, one MTF exit per instruction, as long as it runs on that page;
when it leaves, the permission is restored.  So a busy page costs an MTF exit per
instruction run on it, but an EPT change only per entry.

    class WriteWatch(MemoryHooks):
        def setup(self, vmcs):
            super().setup(vmcs)
            self.hook(0x300000, write=True, after=self.wrote)
        def wrote(self, access):
            print(f"{access.gla:#x} <- {self.value(access):#x} at {access.rip:#x}")

A composable handler (hvpp's layering): subclass it, or put it under another handler
of one's own; exits it does not own go on to the rest of the class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pyflank.exit_handler.ept import EptAccess
from pyflank.exit_handler.exit_handler_intel_x64 import ExitHandlerIntelX64
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import PageFault
from pyflank.memory.ept import READ, WRITE
from pyflank.memory.physical import PAGE_SIZE

Callback = Callable[[EptAccess], None]


@dataclass(eq=False)
class MemoryHook:
    """Guest-physical pages ``[gpa, gpa + size)`` and the access kinds hooked on them."""

    gpa: int
    size: int
    read: bool = False
    write: bool = False
    execute: bool = False
    on_access: Callback | None = None  # at the violation, before the access
    after: Callback | None = None  # after the access (the MTF exit)
    hits: int = field(default=0, init=False)

    def covers(self, page: int) -> bool:
        return self.gpa <= page < self.gpa + self.size

    def catches(self, access: EptAccess) -> bool:
        """Whether this hook is why ``access`` exited."""
        q = access.qualification
        kinds = (q.data_read and self.read) or (q.data_write and self.write)
        return self.covers(access.page) and bool(kinds or (q.instruction_fetch and self.execute))

    def pages(self) -> range:
        return range(self.gpa, self.gpa + self.size, PAGE_SIZE)


class MemoryHooks(ExitHandlerIntelX64):
    """EPT hooks with lift, one-instruction step (MTF) and restore; ``hook`` adds one."""

    def __init__(self) -> None:
        super().__init__()
        self.memory_hooks: list[MemoryHook] = []
        self._stepping: list[tuple[EptAccess, list[MemoryHook]]] = []
        self._running_on: int | None = None  # the execute-hooked page code runs on

    def setup(self, vmcs: Vmcs) -> None:
        super().setup(vmcs)
        self.ept.enable(vmcs)

    def hook(
        self,
        gpa: int,
        size: int = 1,
        *,
        read: bool = False,
        write: bool = False,
        execute: bool = False,
        on_access: Callback | None = None,
        after: Callback | None = None,
    ) -> MemoryHook:
        """Hook the given kinds of access to the pages holding ``[gpa, gpa + size)`` (by
        default the one page ``gpa`` is in); read hooks catch writes too (the EPT cannot
        allow a write without a read)."""
        first = gpa & ~(PAGE_SIZE - 1)
        end = -(-(gpa + size) // PAGE_SIZE) * PAGE_SIZE
        hook = MemoryHook(first, end - first, read, write, execute, on_access, after)
        self.memory_hooks.append(hook)
        self._protect(hook.pages())
        return hook

    def unhook(self, hook: MemoryHook) -> None:
        self.memory_hooks.remove(hook)
        self._protect(hook.pages())

    def _protect(self, pages: range | list[int], *, running: bool = False) -> None:
        """Each page gets the permissions its hooks leave it (``running``: and execute)."""
        for page in pages:
            hooks = [h for h in self.memory_hooks if h.covers(page)]
            read = not any(h.read for h in hooks)
            write = read and not any(h.write for h in hooks)
            execute = running or not any(h.execute for h in hooks)
            self.ept.protect(page, read=read, write=write, execute=execute)

    def handle_ept_violation(self) -> None:
        access = self.ept.violation()
        hooks = [h for h in self.memory_hooks if h.catches(access)]
        if not hooks:
            self.unhooked_violation(access)
            return
        for hook in hooks:
            hook.hits += 1
            if hook.on_access is not None:
                hook.on_access(access)
        if access.fetch and not access.qualification.paging_structure_access:
            self._leave_page()  # (an execute-hooked page jumped to from another)
            self._running_on = access.page  # run on the page, stepped, until it leaves
            self._protect([access.page], running=True)
        else:
            if any(hook.after is not None for hook in hooks):
                access = self._sized(access)
            self._stepping.append((access, hooks))
            self.ept.restore(access.page)  # lifted for the one instruction
        self.monitor_trap_flag(True)

    def _sized(self, access: EptAccess) -> EptAccess:
        """``access`` with its size on the page, from the instruction's decoded accesses."""
        gla = access.gla
        if gla is None or access.qualification.paging_structure_access:
            return access
        page_end = (gla | (PAGE_SIZE - 1)) + 1
        for made in self.memory_accesses():
            if not made.kind & (READ | WRITE) or (access.write and not made.kind & WRITE):
                continue
            if made.linear <= gla < made.linear + made.size:
                return replace(access, size=min(made.linear + made.size, page_end) - gla)
        return access

    def value(self, access: EptAccess) -> int:
        """The little-endian value of ``access``'s bytes in guest memory now: in an ``after``
        callback, what a write left there (its part on the hooked page)."""
        if self.m_memory is None or not access.size:
            raise ValueError(f"no size known for {access}: only after-callbacks get one")
        return int.from_bytes(self.m_memory.read(access.gpa, access.size), "little")

    def _leave_page(self) -> None:
        page, self._running_on = self._running_on, None
        if page is not None:
            self._protect([page])

    def unhooked_violation(self, access: EptAccess) -> None:
        """An EPT violation no hook caused (override to handle it): the seed's report."""
        self.unimplemented_handler()

    def handle_monitor_trap_flag(self) -> None:
        stepped, self._stepping = self._stepping, []
        if not stepped and self._running_on is None:
            self.unimplemented_handler()
            return
        if stepped:
            self._protect(sorted({access.page for access, _ in stepped}))
        if self._running_on is not None and self._page_of_rip() != self._running_on:
            self._leave_page()
        if self._running_on is None:
            self.monitor_trap_flag(False)
        for access, hooks in stepped:
            for hook in hooks:
                if hook.after is not None:
                    hook.after(access)

    def _page_of_rip(self) -> int | None:
        try:
            gpa = self.guest_linear().physical(self.m_state_save.rip, execute=True)
        except PageFault:
            return None
        return gpa & ~(PAGE_SIZE - 1)
