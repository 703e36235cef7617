"""bfm's error kinds, kept free of heavy imports so a bfm command starts fast."""


class ExtensionError(Exception):
    """An extension that cannot be loaded; the message is one line for the user."""


class UsageError(Exception):
    """A bad command line or input file; printed as one line, exit status 2."""


class CommandError(Exception):
    """A command that could not be carried out (a guest that cannot load, a backend that
    cannot run here); printed as one line, exit status 1."""
