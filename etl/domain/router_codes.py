"""The ESC Router's code lists (``CodeView`` codes and labels), as its OpenAPI document names them:
one place for the client's bodies and the emulator's answers."""

from __future__ import annotations

from etl.domain.states import CardStatus

ACADEMIC_LEVELS = {
    "BACHELOR": "Bachelor or equivalent level (ISCED 6)",
    "MASTER": "Master or equivalent level (ISCED 7)",
    "DOCTORATE": "Doctoral or equivalent level (ISCED 8)",
}
CARD_TYPES = {
    "PASSIVE": "Passive",
    "SMART_PASSIVE": "Smart passive",
    "SMART_NO_CDZ": "Smart, no common data zone",
    "SMART_CDZ": "Smart with common data zone",
    "SMART_MAY_SP": "Smart, may have service providers",
    "SMART_PASSIVE_EMULATION": "Smart passive emulation",
    "UNKNOWN": "Unknown",
}
CARD_STATUSES: dict[str, str] = {
    CardStatus.ACTIVE: "Active",
    CardStatus.INACTIVE: "Inactive",
    CardStatus.EXPIRED: "Expired",
}
WRITABLE_CARD_STATUSES = (CardStatus.ACTIVE, CardStatus.INACTIVE)  # EXPIRED only ever comes back on reads
