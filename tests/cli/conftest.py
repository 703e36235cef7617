"""Fixtures of the bfm tests."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory both users of the attack tests can reach (pytest's are mode 0700)."""
    base = Path(tempfile.mkdtemp(prefix="pyflank-two-users-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)
