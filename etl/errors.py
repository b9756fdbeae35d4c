"""Errors that stop a command with one clear line (the CLI prints them without a traceback)."""


class EscSyncError(Exception):
    """A problem the operator can fix: bad configuration, unreachable database, missing table."""


class ConfigError(EscSyncError):
    """An invalid configuration value; the message names the university and the field."""
