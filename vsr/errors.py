"""Errors a user can act on, each with the exit code the CLI returns for it.

Anything raised as a `VsrError` is printed by the CLI as one line (`vsr: <message>`)
and turned into its exit code; anything else is a bug and exits 1 (the traceback is
shown only with `--debug`). Codes are part of the CLI's contract: the README lists them.
Messages name command-line options (`--overwrite`); a library caller passes the keyword
of the same name with `_` for `-` (`overwrite=True`).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1       # a bug: please report it with --debug output
EXIT_USAGE = 2          # bad arguments, bad config value, unknown key
EXIT_INPUT = 3          # input missing, empty, unreadable, corrupt, or without video
EXIT_OUTPUT = 4         # output exists (no --overwrite), unwritable, or disk full
EXIT_MODEL = 5          # model folder/hub id not found or not loadable
EXIT_CODEC = 6          # encoder unknown or refused the options
EXIT_RESOURCES = 7      # out of memory (host or device)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM; `--resume` continues


class VsrError(Exception):
    """Base class: a message meant for the user plus the process exit code."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(VsrError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config field has a bad value or an unknown key; the message names the field.
    field/allowed: set where one field's value was refused, so a caller that took it from
    a command-line option can name the option instead (`--steps 0`)."""

    def __init__(self, message: str, exit_code: int | None = None, *, field: str | None = None,
                 allowed: str | None = None):
        super().__init__(message, exit_code)
        self.field, self.allowed = field, allowed


class InputError(VsrError):
    exit_code = EXIT_INPUT


class OutputError(VsrError):
    exit_code = EXIT_OUTPUT


class ModelError(VsrError):
    exit_code = EXIT_MODEL


class CodecError(VsrError):
    exit_code = EXIT_CODEC


class ResourceError(VsrError):
    exit_code = EXIT_RESOURCES


class Interrupted(VsrError):
    """Ctrl-C or SIGTERM, where the message says more than the CLI's generic line."""

    exit_code = EXIT_INTERRUPTED
