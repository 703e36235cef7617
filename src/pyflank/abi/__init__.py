"""What guest and VMM agree on, spelled once: the vmcall ABI (``.vmcall``), which guest
register carries which vmcall slot (``.registers``) and the hypervisor CPUID leaves
(``.cpuid``).  The guest SDK's headers are generated from it (``.generate``).

This package imports only the standard library: the exit handler, the backends, the
service and ``bfm`` all build on it.
"""

from pyflank.abi.cpuid import (
    CPUID_1_ECX_HYPERVISOR,
    DEFAULT_DOORBELL_PORT,
    HYPERVISOR_BASE_LEAF,
    HYPERVISOR_FEATURES_LEAF,
    HYPERVISOR_MAX_LEAF,
    SIGNATURE,
    CpuidRegisters,
    HypervisorFeatures,
    hypervisor_leaves,
)
from pyflank.abi.registers import (
    ARGUMENT_SLOTS,
    DOORBELL_REGISTERS,
    EVENT_RETURNED_SLOTS,
    INTEL_X64_REGISTER_MAP,
    INTEL_X64_REGISTERS,
    RETURNED_SLOTS,
)
from pyflank.abi.vmcall import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    DATA,
    MAGIC_SLOT,
    OPCODE_SLOT,
    REGISTER_MASK,
    SIGNATURES,
    SLOTS,
    STATUS_SLOT,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_MAGIC_NUMBER,
    VMCALL_OUT_BUFFER_SIZE,
    VMCALL_VERSION,
    Signature,
    VmcallDataType,
    VmcallOpcode,
    VmcallRegisters,
    VmcallVersionIndex,
)

__all__ = [
    "ARGUMENT_SLOTS",
    "BF_VMCALL_FAILURE",
    "BF_VMCALL_SUCCESS",
    "CPUID_1_ECX_HYPERVISOR",
    "DATA",
    "DEFAULT_DOORBELL_PORT",
    "DOORBELL_REGISTERS",
    "EVENT_RETURNED_SLOTS",
    "HYPERVISOR_BASE_LEAF",
    "HYPERVISOR_FEATURES_LEAF",
    "HYPERVISOR_MAX_LEAF",
    "INTEL_X64_REGISTERS",
    "INTEL_X64_REGISTER_MAP",
    "MAGIC_SLOT",
    "OPCODE_SLOT",
    "REGISTER_MASK",
    "RETURNED_SLOTS",
    "SIGNATURE",
    "SIGNATURES",
    "SLOTS",
    "STATUS_SLOT",
    "VMCALL_IN_BUFFER_SIZE",
    "VMCALL_MAGIC_NUMBER",
    "VMCALL_OUT_BUFFER_SIZE",
    "VMCALL_VERSION",
    "CpuidRegisters",
    "HypervisorFeatures",
    "Signature",
    "VmcallDataType",
    "VmcallOpcode",
    "VmcallRegisters",
    "VmcallVersionIndex",
    "hypervisor_leaves",
]
