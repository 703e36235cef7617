"""bfm's error kinds, kept free of imports so a bfm command starts fast."""


class ExtensionError(Exception):
    """An extension that cannot be loaded; the message is one line for the user."""


class UsageError(Exception):
    """A bad command line or input file; printed as one line, exit status 2."""


class CommandError(Exception):
    """A command that could not be carried out (a guest that cannot load, a backend that
    cannot run here); printed as one line, exit status 1."""


class ManagerError(Exception):
    """A command refused in the VMM's current state, or a service failure."""

    def __init__(self, message: str, exit_code: int = 1, output: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output  # printed on stdout before the one-line reason


class ProtocolError(Exception):
    """The peer sent something that is not a message, or went away."""


class PeerRefused(ProtocolError):
    """The process on the other end of the socket is not one to talk to."""
