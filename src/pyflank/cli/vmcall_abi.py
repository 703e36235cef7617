"""The vmcall ABI as plain constants, for bfm's quick commands (no imports).

GENERATED from pyflank.abi by `python -m pyflank.cli.abi_header`: do not edit.
"""

MAGIC_NUMBER = 0xB045EACDACD52E22
BF_VMCALL_FAILURE = 0x8000001000000000
IN_BUFFER_SIZE = 0x20000
OUT_BUFFER_SIZE = 0x20000
SLOTS = (
    "r00",
    "r01",
    "r02",
    "r03",
    "r04",
    "r05",
    "r06",
    "r07",
    "r08",
    "r09",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)
OPCODE_SLOT = 0
MAGIC_SLOT = 1
STATUS_SLOT = 1
ARGUMENT_SLOTS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
OPCODES = {
    "VERSIONS": 1,
    "REGISTERS": 2,
    "DATA": 3,
    "EVENT": 4,
    "START": 5,
    "STOP": 6,
    "UNITTEST": 10,
}
DATA_TYPES = {
    "NONE": 0,
    "STRING_UNFORMATTED": 1,
    "STRING_JSON": 2,
    "BINARY_UNFORMATTED": 10,
}
VERSION_INDEXES = {
    "PROTOCOL": 0,
    "BAREFLANK": 1,
    "USER": 10,
}
# What each opcode reads and returns: the argument's name and its slot, in order.
INPUTS = {
    "VERSIONS": {"index": 2},
    "DATA": {"in_type": 4, "in_addr": 5, "in_size": 6, "out_addr": 8, "out_size": 9},
    "EVENT": {"index": 2},
    "UNITTEST": {"index": 2},
}
OUTPUTS = {
    "VERSIONS": {"major": 3, "minor": 4, "patch": 5},
    "DATA": {"reply_type": 7, "reply_size": 9},
}
