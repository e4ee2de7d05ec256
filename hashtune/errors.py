"""The root of every error a user can cause: bad input, a missing or damaged file, a store that does not answer.

The CLIs catch `HashtuneError` alone and print its message as one line (exit 2, or the code the error names);
any other exception is a bug in hashtune and keeps its traceback. Each error class lives beside the code that
raises it and derives from one of these.
"""

from __future__ import annotations

__all__ = [
    "TRY_AGAIN_EXIT",
    "HashtuneError",
    "InputError",
    "DataError",
    "DataNotFoundError",
    "NotFoundError",
    "MissingFileError",
]

TRY_AGAIN_EXIT = 75
"""sysexits' EX_TEMPFAIL: nothing is lost, run the same command again once the world recovers (a full disk, a store
or storage that does not answer); every such error exits with it."""


class HashtuneError(Exception):
    """An error the user can act on; its message is one line that names the bad value and what would be valid."""

    exit_code = 2


class InputError(HashtuneError, ValueError):
    """A value the user gave (a config key, a space, a name, an argument of the Python API) that cannot be used."""


class MissingFileError(InputError, FileNotFoundError):
    """A file the user named (weights, a config) that is not there."""


class DataError(HashtuneError, ValueError):
    """A dataset on disk that cannot be read as the config says (a missing folder, a damaged file, wrong shapes)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data folder or file the config names that is not there."""


class NotFoundError(HashtuneError, LookupError):
    """Something the user named (an experiment, a run) that the store does not hold."""
