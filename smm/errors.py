"""Errors a user can cause. The entrypoint prints them as one line and exits non-zero."""


class SmmError(Exception):
    """A problem with the user's input, config or environment: one line, no traceback."""

    exit_code = 1


class ConfigError(SmmError):
    """A config value out of its allowed range or choices."""

    exit_code = 2


class StageNotAvailable(SmmError):
    """The requested stage is not built yet."""

    exit_code = 2


class GateFailed(SmmError):
    """The evaluated model did not beat its baseline by the required margin."""

    exit_code = 3
