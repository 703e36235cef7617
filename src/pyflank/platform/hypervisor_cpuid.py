"""The hypervisor CPUID leaves, kept importable here; they live in ``pyflank.abi.cpuid``."""

from pyflank.abi.cpuid import (
    CPUID_1_ECX_HYPERVISOR,
    DEFAULT_DOORBELL_PORT,
    HYPERVISOR_BASE_LEAF,
    HYPERVISOR_FEATURES_LEAF,
    HYPERVISOR_MAX_LEAF,
    SIGNATURE,
    HypervisorFeatures,
    hypervisor_leaves,
)

__all__ = [
    "CPUID_1_ECX_HYPERVISOR",
    "DEFAULT_DOORBELL_PORT",
    "HYPERVISOR_BASE_LEAF",
    "HYPERVISOR_FEATURES_LEAF",
    "HYPERVISOR_MAX_LEAF",
    "SIGNATURE",
    "HypervisorFeatures",
    "hypervisor_leaves",
]
