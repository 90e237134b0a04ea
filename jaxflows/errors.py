"""User-facing errors: the CLI prints them as one line plus a hint, never a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing dataset, bad input). One-line message."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint else msg


class ConfigError(UserError, ValueError):
    """An invalid config: unknown key, wrong type, inconsistent sizes."""


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """A dataset that has not been built; the message names the command that builds it."""
