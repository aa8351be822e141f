"""Errors a user can cause. The entrypoint prints them as one line and exits non-zero."""


class SmmError(Exception):
    """A problem with the user's input, config or environment: one line, no traceback."""

    exit_code = 1
    label = "error"
    """What the line starts with: ``error: ...``."""


class ConfigError(SmmError):
    """A config value out of its allowed range or choices."""

    exit_code = 2


class StageNotAvailable(SmmError):
    """The requested stage does not exist."""

    exit_code = 2


class GateFailed(SmmError):
    """The evaluated model did not beat its baseline by the required margin."""

    exit_code = 3


class GateRefused(SmmError):
    """The loop's promote gate kept the deployed model: the new run is not better."""

    exit_code = 3
    label = "refused"


class NothingNew(SmmError):
    """The loop found no new feedback or data since its last finished run."""

    exit_code = 4
    label = "nothing new"


class LoopLocked(SmmError):
    """Another loop (or rollback) holds the lock."""

    exit_code = 5
