"""ESC Router v2 emulator (follows docs/esc-router-v2.md) with SQLite state and fault injection.

``serve`` runs it in this process (blocking), ``main`` is the command line (``python -m etl.emulator``
and ``esc-sync emulator``), ``start_emulator`` runs it as a subprocess for tests and the demo.
"""

from etl.emulator.app import create_app
from etl.emulator.faults import FAULT_KINDS, FaultConfig
from etl.emulator.process import EmulatorProcess, start_emulator
from etl.emulator.server import main, serve

__all__ = ["FAULT_KINDS", "EmulatorProcess", "FaultConfig", "create_app", "main", "serve", "start_emulator"]
