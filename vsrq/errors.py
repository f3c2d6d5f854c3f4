"""User-facing errors: the CLI prints their message as one line and exits non-zero, never a traceback."""

from __future__ import annotations


class VsrqError(Exception):
    """An error whose message is meant for the user as-is (one line, says what to do)."""

    exit_code: int = 1


class InputError(VsrqError):
    """The input file cannot be used (not a video, truncated, no video stream, no frames)."""


class OutputError(VsrqError):
    """The output cannot be written where asked (exists, same as input, unwritable)."""


class ModelError(VsrqError):
    """The model cannot be resolved, downloaded, verified or loaded."""


class Interrupted(VsrqError):
    """The user stopped the job (Ctrl-C, SIGTERM); the message says what was kept and how to go on."""

    exit_code = 130


class NotAvailableError(VsrqError):
    """A feature that exists in the CLI but is not implemented yet; says so instead of faking output."""

    exit_code = 3
