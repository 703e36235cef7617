"""bfm's error kinds, kept free of heavy imports so a bfm command starts fast."""


class ExtensionError(Exception):
    """An extension that cannot be loaded; the message is one line for the user."""
