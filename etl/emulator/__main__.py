"""``python -m etl.emulator``: see ``etl.emulator.server`` for the flags."""

from etl.emulator.server import main

raise SystemExit(main())
