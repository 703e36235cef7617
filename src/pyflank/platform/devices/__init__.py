"""The machine's devices, each small and testable alone, on range-mapped buses.

A device answers ``read(offset, size)`` and ``write(offset, size, value)`` for the range
the :class:`~pyflank.platform.devices.manager.DeviceManager` placed it at: it never sees
absolute ports or addresses (firecracker's ``BusDevice``, crosvm's ``devices``).  Devices
raise interrupts through an :class:`~pyflank.platform.devices.irq.IrqLine` handed to them,
read virtual time from a :class:`~pyflank.platform.devices.clock.Clock` handed to them,
and keep no module-level state.  ``pc`` assembles the PC platform from them.
"""
