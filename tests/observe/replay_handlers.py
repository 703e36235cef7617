"""A handler recorded on a real guest, and changed versions of it that replay must catch.

``GUEST``: a JSON DATA vmcall (guest-virtual buffers: page walks and buffer reads in guest
memory, a reply written there; the status kept in R15), two RDMSRs of IA32_PAT (answered
from the VMCS) and one of the TSC (the CPU's answer: the host's, on KVM), then HLT.
"""

from __future__ import annotations

import json
from typing import Any

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64.exit_reasons import ExitReason

REQUEST = json.dumps({"cmd": "add", "args": [1, 2, 39]}).encode()
GUEST = f"""
    .include "pyflank.inc"
    PYFLANK_INIT
    lea r13, [rip + request]
    lea r14, [rip + reply]
    VMCALL_DATA VMCALL_DATA_JSON, r13, {len(REQUEST)}, r14, 64
    mov r15, rdx
    mov ecx, 0x277
    rdmsr
    rdmsr
    mov ecx, 0x10
    rdmsr
    hlt
request: .byte {", ".join(str(b) for b in REQUEST)}
reply: .fill 64, 1, 0
    PYFLANK_RUNTIME
"""


class Commands(ExitHandlerIntelX64):
    """Answers {"cmd": "add", "args": [...]} with the sum."""

    def handle_vmcall_data_string_json(self, ijson: Any) -> Any:
        return {"result": self.add(ijson["args"])}

    def add(self, args: list[int]) -> int:
        return sum(args)


class AddsOneMore(Commands):
    def add(self, args: list[int]) -> int:
        return sum(args) + 1  # a reply as long as the recorded one: only memory differs


class LiesAboutPatTheSecondTime(Commands):
    def __init__(self) -> None:
        super().__init__()
        self.pat_reads = 0

    def handle_rdmsr(self) -> None:
        super().handle_rdmsr()
        if self.m_state_save.rcx == 0x277:
            self.pat_reads += 1
            if self.pat_reads == 2:
                self.m_state_save.rax ^= 1


class HaltsAtTheTsc(Commands):
    def handle_rdmsr(self) -> None:
        if self.m_state_save.rcx == 0x10:
            self.halt()
            return
        super().handle_rdmsr()


class InjectsAtTheTsc(Commands):
    def handle_exit(self, reason: int) -> None:
        if reason == ExitReason.RDMSR and self.m_state_save.rcx == 0x10:
            self.inject_exception(13, 0)
            return
        super().handle_exit(reason)
