"""Architectural register bits, once: CR0, CR4, EFER, RFLAGS, segment access rights.

Plain ints (IntFlag arithmetic costs a microsecond per operator on paths that run at
every exit); the names decode a value for dumps and messages.
"""

from __future__ import annotations

from typing import Final

from pyflank.intel_x64.msrs import EFER_LMA as EFER_LMA
from pyflank.intel_x64.msrs import EFER_LME as EFER_LME
from pyflank.intel_x64.msrs import EFER_NXE as EFER_NXE
from pyflank.intel_x64.msrs import EFER_SCE as EFER_SCE

# -- control registers, EFER, RFLAGS (SDM Vol. 3A, "Control Registers") --------
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
CR4_VMXE, CR4_PCIDE, CR4_CET, CR4_FRED = 1 << 13, 1 << 17, 1 << 23, 1 << 32
RFLAGS_TF, RFLAGS_IF, RFLAGS_IOPL, RFLAGS_NT = 1 << 8, 1 << 9, 3 << 12, 1 << 14
RFLAGS_RF, RFLAGS_VM = 1 << 16, 1 << 17
RFLAGS_FIXED1 = 1 << 1
# 63:22, 15, 5 and 3 are reserved and must be 0 (SDM 26.3.1.4).
RFLAGS_RESERVED0: Final[int] = ~((1 << 22) - 1) & ((1 << 64) - 1) | 1 << 15 | 1 << 5 | 1 << 3
DEBUGCTL_BTF = 1 << 1

NAMES_CR0: Final[dict[int, str]] = {
    0: "PE", 1: "MP", 2: "EM", 3: "TS", 4: "ET", 5: "NE", 16: "WP", 18: "AM",
    29: "NW", 30: "CD", 31: "PG",
}  # fmt: skip
NAMES_CR4: Final[dict[int, str]] = {
    0: "VME", 1: "PVI", 2: "TSD", 3: "DE", 4: "PSE", 5: "PAE", 6: "MCE", 7: "PGE",
    8: "PCE", 9: "OSFXSR", 10: "OSXMMEXCPT", 11: "UMIP", 12: "LA57", 13: "VMXE",
    14: "SMXE", 16: "FSGSBASE", 17: "PCIDE", 18: "OSXSAVE", 19: "KL", 20: "SMEP",
    21: "SMAP", 22: "PKE", 23: "CET", 24: "PKS", 25: "UINTR", 28: "LAM_SUP",
    32: "FRED",
}  # fmt: skip
NAMES_EFER: Final[dict[int, str]] = {0: "SCE", 8: "LME", 10: "LMA", 11: "NXE"}
NAMES_RFLAGS: Final[dict[int, str]] = {
    0: "CF", 1: "fixed1", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF", 10: "DF",
    11: "OF", 14: "NT", 16: "RF", 17: "VM", 18: "AC", 19: "VIF", 20: "VIP", 21: "ID",
}  # fmt: skip


def flag_names(value: int, names: dict[int, str]) -> str:
    """The set bits of ``value`` by name, unnamed bits as ``bitN``."""
    out = []
    bit = 0
    while value >> bit:
        if value >> bit & 1:
            out.append(names.get(bit, f"bit{bit}"))
        bit += 1
    return " ".join(out)


# -- segment access rights (SDM Vol. 3C, "Guest Register State") ----------------
AR_TYPE, AR_S, AR_DPL_SHIFT, AR_P = 0xF, 1 << 4, 5, 1 << 7
AR_RESERVED_11_8, AR_L, AR_DB, AR_G = 0xF00, 1 << 13, 1 << 14, 1 << 15
AR_UNUSABLE = 1 << 16
AR_RESERVED_31_17: Final[int] = 0xFFFE_0000
