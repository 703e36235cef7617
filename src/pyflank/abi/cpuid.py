"""The hypervisor CPUID leaves pyflank advertises to its guests: who the VMM is and how a
guest reaches it (the VMCALL instruction, or an OUT to the I/O-port doorbell)."""

from __future__ import annotations

from enum import IntFlag
from typing import Final

CpuidRegisters = tuple[int, int, int, int]  # eax, ebx, ecx, edx

HYPERVISOR_BASE_LEAF: Final = 0x40000000
HYPERVISOR_FEATURES_LEAF: Final = 0x40000001
HYPERVISOR_MAX_LEAF: Final = HYPERVISOR_FEATURES_LEAF
SIGNATURE: Final = "PyFlank\0\0\0\0\0"  # 12 bytes: EBX, ECX, EDX
CPUID_1_ECX_HYPERVISOR: Final = 1 << 31
DEFAULT_DOORBELL_PORT: Final = 0x0CF6


class HypervisorFeatures(IntFlag):
    """CPUID.40000001H:EAX — how a guest reaches the VMM (EBX holds the doorbell port)."""

    VMCALL_INSTRUCTION = 1 << 0
    IO_PORT_DOORBELL = 1 << 1


def hypervisor_leaves(
    features: HypervisorFeatures = HypervisorFeatures.VMCALL_INSTRUCTION,
    doorbell_port: int = DEFAULT_DOORBELL_PORT,
) -> dict[int, CpuidRegisters]:
    """Leaf -> (eax, ebx, ecx, edx) of the two hypervisor leaves, for ``features``."""
    raw = SIGNATURE.encode()
    ebx, ecx, edx = (int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8))
    port = doorbell_port if features & HypervisorFeatures.IO_PORT_DOORBELL else 0
    return {
        HYPERVISOR_BASE_LEAF: (HYPERVISOR_MAX_LEAF, ebx, ecx, edx),
        HYPERVISOR_FEATURES_LEAF: (int(features), port, 0, 0),
    }
