"""The machine around the vCPUs: boot state, loaders, COM1, the port bus, the assembler.

Submodules are imported directly (``pyflank.platform.boot``, ``.loader``, ``.serial``,
``.bus``, ``.assemble``).  The hypervisor CPUID leaves live in ``pyflank.abi.cpuid``.
"""
