"""Errors a user can cause.

The CLI prints any `KnnError` as one line and exits with its `exit_code`; anything else is a bug
and is allowed to raise with a traceback.
"""

from __future__ import annotations


class KnnError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    exit_code = 2


class ConfigError(KnnError, ValueError):
    """A config file or `--set` override that cannot be turned into valid settings (a bad
    value, hence also a ValueError for callers of the Python API)."""


class DataError(KnnError):
    """CIFAR-10 cannot be found, fetched, verified or read."""


class RunFolderError(KnnError):
    """A folder given as a run or sweep folder is not one, or is incomplete."""


class RunFailed(KnnError):
    """A run finished but did not succeed (diverged, or a check failed)."""

    exit_code = 1
