"""Errors that stop a command with one clear line (the CLI prints them without a traceback)."""


class EscSyncError(Exception):
    """A problem the operator can fix: bad configuration, unreachable database, missing table."""


class UniversityError(EscSyncError):
    """Every partition of one university would fail the same way (a refused Router key, a 403 from
    the address allow-list, Esse3 unreachable): the others go on, this university's are skipped."""


class ConfigError(EscSyncError):
    """An invalid configuration value; the message names the university and the field."""
