"""What the engine raises; a module of its own so every part of the package can raise it."""


class EngineError(Exception):
    """The sealed model cannot be turned into an engine; the message says why."""


class EngineUnavailable(EngineError):
    """No engine is open in this process (not opened yet, or opening failed)."""
