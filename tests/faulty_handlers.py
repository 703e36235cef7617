"""Exit handlers that fail on purpose, for the tests of dispatch()'s guard."""

from pyflank.exit_handler import ExitHandlerIntelX64


class Unprintable(Exception):
    """An exception whose ``__str__`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def raising(exc: BaseException, method: str = "handle_cpuid") -> type[ExitHandlerIntelX64]:
    """A handler whose ``method`` raises ``exc``."""

    def fail(self: ExitHandlerIntelX64) -> None:
        raise exc

    return type("Raises", (ExitHandlerIntelX64,), {method: fail})
