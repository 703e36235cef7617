"""Backends play the processor in VMX non-root operation: ``emu`` (unicorn) and ``kvm``.

``base`` holds what they share with the vCPU layer (``StopReason``, the port-I/O protocol).
"""
