"""The backends' names are spelled once (``backends.names``, which bfm imports without
the engines); the factory builds exactly those engines."""

from pyflank.backends import factory
from pyflank.backends.names import ENGINES, NAMES
from pyflank.cli.parser import BACKENDS


def test_the_factory_builds_exactly_the_named_engines() -> None:
    assert tuple(factory.BACKENDS) == ENGINES
    assert BACKENDS == factory.NAMES == NAMES
