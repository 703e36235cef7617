"""The guest registers the exit stub saves, as Bareflank's state_save_intel_x64."""

from __future__ import annotations

GENERAL_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rbp", "rsi", "rdi",
    "r08", "r09", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
# The general registers by the SDM's numbering (instruction information, qualifications).
SDM_REGISTERS = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r08", "r09", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip


class StateSave:
    """General registers, RIP and RSP of the guest at the exit, and the vCPU id.

    On resume RIP and RSP come from here, not from the VMCS: the exit stub of
    Bareflank writes them back with VMWRITE, so ``advance_rip`` edits only this.
    """

    __slots__ = (*GENERAL_REGISTERS, "rip", "rsp", "vcpuid")

    def __init__(self, vcpuid: int = 0) -> None:
        self.rax = self.rbx = self.rcx = self.rdx = self.rbp = self.rsi = self.rdi = 0
        self.r08 = self.r09 = self.r10 = self.r11 = 0
        self.r12 = self.r13 = self.r14 = self.r15 = 0
        self.rip = self.rsp = 0
        self.vcpuid = vcpuid

    def as_dict(self) -> dict[str, int]:
        """Register name -> value, for every register and the vCPU id."""
        return {name: getattr(self, name) for name in self.__slots__}

    def gprs(self) -> tuple[int, ...]:
        """The 16 general registers by SDM number (RAX=0, RCX=1, ... R15=15)."""
        return tuple(getattr(self, name) for name in SDM_REGISTERS)

    def edx_eax(self) -> int:
        """The 64-bit value in EDX:EAX (what WRMSR writes)."""
        return (self.rdx & 0xFFFFFFFF) << 32 | self.rax & 0xFFFFFFFF

    def update(self, values: dict[str, int]) -> None:
        """Set registers from ``values`` (masked to 64 bits); unknown names raise."""
        for name, value in values.items():
            if name not in self.__slots__:
                raise AttributeError(f"StateSave has no register {name!r}")
            setattr(self, name, value & 0xFFFF_FFFF_FFFF_FFFF)

    def __repr__(self) -> str:
        regs = " ".join(f"{k}={v:#x}" for k, v in self.as_dict().items())
        return f"StateSave({regs})"
