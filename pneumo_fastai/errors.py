"""The one exception type for mistakes a user can fix (paths, files, options)."""


class PneumoError(Exception):
    """A problem the user can fix; its message says what was wrong and what to do."""

    exit_code: int = 2


class Aborted(PneumoError):
    """The user aborted the run (a second Ctrl-C); nothing half-done was written."""

    exit_code = 130


class Interrupted(PneumoError):
    """A run was stopped by the user (Ctrl-C, SIGTERM) after exporting what it had finished."""

    exit_code = 130


class DataError(PneumoError):
    """The dataset folder, its layout, or one of its images is unusable."""


class WeightsError(PneumoError):
    """Pretrained weights could not be found, downloaded, or loaded."""


class ModelFileError(PneumoError):
    """An exported model or its model card is missing, tampered with, or inconsistent."""
