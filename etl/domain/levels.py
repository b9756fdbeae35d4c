"""Academic level (ISCED 6/7/8 as the Router names them) from the Esse3 course type."""

from __future__ import annotations

BACHELOR, MASTER, DOCTORATE = "BACHELOR", "MASTER", "DOCTORATE"

# TIPO_CORSO_COD values of P06_CDS. Single-cycle master degrees (LM5, LM6) are ISCED 7.
_LEVELS = {
    "L1": BACHELOR,
    "L2": BACHELOR,
    "L": BACHELOR,
    "LT": BACHELOR,
    "LM": MASTER,
    "LM5": MASTER,
    "LM6": MASTER,
    "LS": MASTER,
    "M1": MASTER,
    "M2": MASTER,
    "D": DOCTORATE,
    "DR": DOCTORATE,
    "PHD": DOCTORATE,
}


def academic_level(course_type: str | None) -> str | None:
    """None when the course type has no ESC level (e.g. single courses, specialisation schools)."""
    if not course_type:
        return None
    return _LEVELS.get(course_type.strip().upper())
