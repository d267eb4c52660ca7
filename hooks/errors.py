"""One exception type for bad input, so callers (and scripts) can print it without a traceback."""


class TwinlensError(ValueError):
    """Bad input or state; the message says what is wrong and how to fix it."""
