"""The machine around the vCPUs: boot state, loaders, COM1, the port bus, hypervisor CPUID.

Submodules are imported directly (``pyflank.platform.boot``, ``.loader``, ``.serial``,
``.bus``, ``.assemble``, ``.hypervisor_cpuid``): the exit handler imports the CPUID leaves
and must not pull in keystone or the loaders with them.
"""
