"""The vmcall ABI, kept importable here; it lives in ``pyflank.abi`` (``abi.vmcall``,
``abi.registers``)."""

from pyflank.abi.registers import INTEL_X64_REGISTER_MAP
from pyflank.abi.vmcall import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    REGISTER_MASK,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_MAGIC_NUMBER,
    VMCALL_OUT_BUFFER_SIZE,
    VMCALL_VERSION,
    VmcallDataType,
    VmcallOpcode,
    VmcallRegisters,
    VmcallVersionIndex,
)

__all__ = [
    "BF_VMCALL_FAILURE",
    "BF_VMCALL_SUCCESS",
    "INTEL_X64_REGISTER_MAP",
    "REGISTER_MASK",
    "VMCALL_IN_BUFFER_SIZE",
    "VMCALL_MAGIC_NUMBER",
    "VMCALL_OUT_BUFFER_SIZE",
    "VMCALL_VERSION",
    "VmcallDataType",
    "VmcallOpcode",
    "VmcallRegisters",
    "VmcallVersionIndex",
]
