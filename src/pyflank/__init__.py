"""pyflank: Bareflank's Intel x64 VM-exit handler in Python, over a software CPU and KVM."""

__version__ = "0.1.0"
VERSION_MAJOR, VERSION_MINOR, VERSION_PATCH = (int(p) for p in __version__.split("."))
