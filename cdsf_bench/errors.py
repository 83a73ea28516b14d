"""Errors the CLI turns into a clear message and an exit code instead of a traceback."""

from __future__ import annotations


class CdsfBenchError(Exception):
    """Base of the errors that are the user's to fix; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class InputError(CdsfBenchError):
    """Bad input: a file, field, subject or option. The message names it and the fix."""


class ConfigError(InputError):
    """A configuration key, value or file that cannot be used."""


class RunFailed(CdsfBenchError):
    """A run that started but could not finish (a NaN loss, say); exit code 1."""

    exit_code = 1
