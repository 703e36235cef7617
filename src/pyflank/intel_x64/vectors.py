"""Exception vectors (SDM Vol. 3A, Table 6-1), by the mnemonic the SDM gives them."""

from __future__ import annotations

from typing import Final

VECTOR_DE: Final = 0  # divide error
VECTOR_DB: Final = 1  # debug
VECTOR_BP: Final = 3  # breakpoint (INT3)
VECTOR_UD: Final = 6  # invalid opcode
VECTOR_DF: Final = 8  # double fault
VECTOR_TS: Final = 10  # invalid TSS
VECTOR_NP: Final = 11  # segment not present
VECTOR_SS: Final = 12  # stack-segment fault
VECTOR_GP: Final = 13  # general protection
VECTOR_PF: Final = 14  # page fault
