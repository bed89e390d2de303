"""The error types a user sees as one line (exit code 2, or 1 for a run that stopped itself): one
place, importable without torch, so that `cli.main_guard` catches them all before anything heavy loads."""


class UsageError(ValueError):
    """A bad command-line value, with a one-line message naming it."""


class ConfigError(ValueError):
    """A config problem, with a one-line message naming the key."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a one-line message naming the file."""


class DataError(ValueError):
    """A dataset that cannot be loaded, with a one-line message naming the path and what is expected."""


class FidelityError(ValueError):
    """Metrics that cannot be computed as asked, with a one-line reason."""


class RunStopped(RuntimeError):
    """A run that stopped itself for a reason the user must act on (exit code 1)."""


def first_line(error, limit=200):
    """An exception's message cut to one line (its type when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
