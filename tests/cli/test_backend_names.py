"""bfm spells the backend names itself, to start without importing the engines; they
must stay the names ``Vm(backend=...)`` takes."""

from pyflank.backends.factory import NAMES
from pyflank.cli.parser import BACKENDS


def test_bfm_offers_exactly_the_backends_vm_takes() -> None:
    assert BACKENDS == NAMES
