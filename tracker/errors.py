"""One family of errors. Domain code raises these; the CLI prints one line and exits."""

from __future__ import annotations


class TrackerError(Exception):
    """An error the user can fix. ``str(err)`` is the whole message; ``exit_code`` is the CLI status."""

    exit_code = 2


class SpecError(TrackerError):
    """A bad experiment file: names the file, the field (with its line where YAML gives it) and the value."""

    def __init__(self, path: str | None, field: str | None, message: str, line: int | None = None):
        self.path, self.field, self.line, self.detail = path, field, line, message
        where = path or "<experiment>"
        if field:
            where += f": {field}"
        if line:
            where += f" (line {line})"
        super().__init__(f"{where}: {message}")


class UsageError(TrackerError):
    """A bad command-line value (an unknown axis in --rows, a malformed --where ...)."""


class ModelError(TrackerError):
    """A model, VAE or scheduler that cannot be loaded, or a dtype the device cannot run."""


class ConditioningError(ModelError):
    """A ControlNet, IP-Adapter or refiner that cannot be loaded or does not fit the run's model."""


class StoreError(TrackerError):
    """The run store cannot be opened or does not hold what was asked for."""


class NotFoundError(TrackerError):
    """A run key, experiment or file that does not exist."""
