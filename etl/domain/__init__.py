"""Pure domain rules: no I/O here, so every rule is unit-tested on plain values."""
