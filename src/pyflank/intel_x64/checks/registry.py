"""What a VM-entry check is, what it reports, and the table they register in.

Section numbers are those of the SDM edition the rules were verified against:
an edition from about 2016 in which "VM Entries" is chapter 26 of Vol. 3C
(26.2 "Checks on VMX Controls and Host-State Area", 26.3 "Checking and Loading
Guest State").  Later editions renumber the chapter (27 from about 2019, 29 in
the newest) but keep the subsection numbers, so 26.3.1.2 there is 27.3.1.2 or
29.3.1.2.  Rules that the 2016 edition does not have yet (CET, FRED, PKRS,
tertiary controls, ...) carry a 27.x number: their subsection in the later
editions, with the chapter number those editions started with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pyflank.intel_x64.checks.context import EntryContext

VERIFIED_CHAPTER = "26"
"""Chapter number of "VM Entries" in the SDM edition the section numbers come from."""

Problem = tuple[str, dict[str, int]]
"""What a check function yields: a message and the fields (name -> value) involved."""

CheckFunction = Callable[["EntryContext"], Iterator[Problem]]
T = TypeVar("T")


class CheckGroup(Enum):
    """The SDM's grouping of VM-entry checks (sections 26.2 and 26.3.1.x)."""

    CONTROLS = "VMX controls"
    HOST_STATE = "host-state area"
    GUEST_CONTROL_REGISTERS = "guest control registers, debug registers and MSRs"
    GUEST_SEGMENT_REGISTERS = "guest segment registers"
    GUEST_DESCRIPTOR_TABLES = "guest descriptor-table registers"
    GUEST_RIP_RFLAGS = "guest RIP and RFLAGS"
    GUEST_NON_REGISTER_STATE = "guest non-register state"
    GUEST_PDPTES = "guest page-directory-pointer-table entries"


GUEST_GROUPS = frozenset(
    {
        CheckGroup.GUEST_CONTROL_REGISTERS,
        CheckGroup.GUEST_SEGMENT_REGISTERS,
        CheckGroup.GUEST_DESCRIPTOR_TABLES,
        CheckGroup.GUEST_RIP_RFLAGS,
        CheckGroup.GUEST_NON_REGISTER_STATE,
        CheckGroup.GUEST_PDPTES,
    }
)


@dataclass(frozen=True)
class Violation:
    """One broken VM-entry rule: which rule, where the SDM states it, and the values."""

    check_id: str
    section: str
    message: str
    fields: dict[str, int]

    def __str__(self) -> str:
        values = ", ".join(f"{name}={value:#x}" for name, value in self.fields.items())
        text = f"[{self.check_id}] SDM {self.section}: {self.message}"
        return f"{text} ({values})" if values else text


@dataclass(frozen=True)
class Check:
    """A registered rule; ``function`` yields one problem per offending register."""

    id: str
    group: CheckGroup
    section: str
    function: CheckFunction
    docstring: str

    @property
    def later_edition(self) -> bool:
        """True for rules newer than the edition the section numbers are verified in."""
        return not self.section.startswith(VERIFIED_CHAPTER + ".")

    def run(self, ctx: EntryContext) -> list[Violation]:
        return [
            Violation(self.id, self.section, message, fields)
            for message, fields in self.function(ctx)
        ]


REGISTERED: list[Check] = []
_IDS: set[str] = set()


def rule(
    check_id: str, group: CheckGroup, section: str
) -> Callable[[CheckFunction], CheckFunction]:
    """Register a check function under a stable id; its docstring states the rule."""

    def register(function: CheckFunction) -> CheckFunction:
        if check_id in _IDS:
            raise ValueError(f"duplicate VM-entry check id {check_id!r}")
        if not function.__doc__:
            raise ValueError(f"VM-entry check {check_id!r} has no docstring")
        _IDS.add(check_id)
        doc = " ".join(function.__doc__.split())
        REGISTERED.append(Check(check_id, group, section, function, doc))
        return function

    return register


def applied(
    helper: Callable[[EntryContext, T], Iterator[Problem]], arg: T, doc: str
) -> CheckFunction:
    """A check function that runs ``helper(ctx, arg)`` and states ``doc``: one rule
    that the SDM gives the host and the guest alike, registered once per side."""

    def check(ctx: EntryContext) -> Iterator[Problem]:
        return helper(ctx, arg)

    check.__doc__ = doc
    return check
