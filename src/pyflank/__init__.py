"""pyflank: Bareflank's Intel x64 VM-exit handler in Python, over a software CPU and KVM."""

import logging as _logging

__version__ = "0.1.0"
VERSION_MAJOR, VERSION_MINOR, VERSION_PATCH = (int(p) for p in __version__.split("."))

# A library stays quiet unless the application configures logging.
_logging.getLogger("pyflank").addHandler(_logging.NullHandler())
