"""The one exception type that carries a message meant for users (CLI line, HTTP 4xx body)."""


class AscendraError(ValueError):
    """A problem in user input (config, trace, preset, argument) with a message fit for users."""
