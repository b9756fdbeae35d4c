"""Pure rendering of card artwork: QR symbols, QR + ESC logo, virtual badge HTML, printable PDFs.

No database and no network here: callers pass a BadgeView and the bytes to draw. Import the
submodules directly (``etl.render.qr`` etc.) so process-pool workers load only what they need.
"""
