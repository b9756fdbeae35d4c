"""Errors that stop a command with one clear line (the CLI prints them without a traceback), and the
exit codes that tell a scheduler which kind of trouble it was."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1  # a bug: one line, ESC_SYNC_DEBUG=1 shows the traceback
    CONFIG = 2  # bad configuration or command line, state DB not migrated
    MIXED = 3  # partitions failed for different reasons: one line each
    DATABASE = 4  # the state DB or a university's Esse3 unreachable or failing
    ROUTER = 5  # the ESC Router unreachable, or refusing a university's key or address
    FILES = 6  # disk full, permission denied
    BUSY = 7  # another run holds the partition, or a run waited too long for one
    SERVICE = 8  # a deployment's service: broker unreachable, webserver or daemon down
    DRIFT = 9  # reconcile found the Router and the state DB apart (not repaired, or no rule to)
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM


class EscSyncError(Exception):
    """A problem the operator can fix: bad configuration, unreachable database, missing table.
    ``transient``: waiting and trying again may succeed (a service down), as opposed to a problem that
    needs a person (a refused key, a missing table); a deployment retries the former by itself."""

    exit_code: ExitCode = ExitCode.CONFIG
    transient: bool = False

    def __init__(
        self, message: str, *, exit_code: ExitCode | None = None, transient: bool | None = None
    ) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        if transient is not None:
            self.transient = transient


class UniversityError(EscSyncError):
    """Every partition of one university would fail the same way (a refused Router key, a 403 from
    the address allow-list, the Router or Esse3 unreachable): the others go on, this university's
    are skipped."""


class ConfigError(EscSyncError):
    """An invalid configuration value; the message names the university and the field."""


def check_keys(where: str, table: object, known: frozenset[str]) -> None:
    """A configuration table with only ``known`` keys: anything else is a typo, never ignored."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")


class VanishHeld(EscSyncError):
    """More of a partition's rows vanished from Esse3 at once than ``[esse3] max_vanished_share``: nothing
    was deactivated, and nothing will be until a person confirms it (`esc-sync reconcile --repair
    --confirm-vanished`). Retrying does not help."""

    exit_code = ExitCode.DRIFT
