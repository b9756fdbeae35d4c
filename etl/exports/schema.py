"""The layout of one card in a vendor export: the Parquet schema, its documentation and the row type.

The descriptions live in the schema itself (field metadata, plus a JSON copy in the file-level key/value
metadata for readers that drop Arrow field metadata, such as Spark or DuckDB), so the Parquet file is
self-describing and ``SCHEMA_DOC`` cannot drift from what is written.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = "1"

# (name, type, description). Every field is required: a vendor cannot print or encode a card without it.
_FIELDS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("university", pa.string(), "esc-sync code of the issuing university (its configuration key)."),
    ("pic", pa.string(), "Participant Identification Code of the university on the ESC Router."),
    ("academic_year", pa.int16(), "First calendar year of the enrolment's academic year (2025 = 2025/26)."),
    ("matricola", pa.string(), "Student number (matricola) in the university's Esse3."),
    ("full_name", pa.string(), "Cardholder's name as printed on the card (UTF-8, accents preserved)."),
    ("esi", pa.string(), "European Student Identifier (`urn:schac:personalUniqueCode:int:esi:…`)."),
    (
        "escn",
        pa.string(),
        "European Student Card Number (lower-case UUID) from the ESC Router; unique in "
        "an export, and the name of the card's QR files in the ZIP.",
    ),
    ("card_type", pa.string(), "Card type as registered on the ESC Router."),
    ("issued_at", pa.date32(), "Date the card was issued."),
    ("expires_at", pa.date32(), "Date the card expires (not before `issued_at`)."),
    ("status", pa.string(), "Card status in esc-sync at export time."),
    ("qr_payload", pa.string(), "Text encoded in the card's QR code (the ESC verification URL)."),
    ("qr_png", pa.binary(), "The QR code as a PNG image (the same bytes as `qr/<escn>.png` in the ZIP)."),
)

FIELD_DESCRIPTIONS: dict[str, str] = {name: doc for name, _, doc in _FIELDS}

EXPORT_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, type_, nullable=False, metadata={"description": doc}) for name, type_, doc in _FIELDS],
    metadata={
        "esc_sync.export_schema_version": SCHEMA_VERSION,
        "esc_sync.field_descriptions": json.dumps(FIELD_DESCRIPTIONS, ensure_ascii=False),
    },
)

# The manifest (CSV and Parquet, inside the ZIP) carries every field but the image bytes.
BINARY_FIELDS: frozenset[str] = frozenset({"qr_png"})
MANIFEST_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _FIELDS if name not in BINARY_FIELDS)
MANIFEST_SCHEMA: pa.Schema = pa.schema(
    [EXPORT_SCHEMA.field(name) for name in MANIFEST_COLUMNS], metadata=EXPORT_SCHEMA.metadata
)


def _schema_doc() -> str:
    lines = ["| Field | Type | In manifest | Description |", "|---|---|---|---|"]
    for name, type_, doc in _FIELDS:
        in_manifest = "no" if name in BINARY_FIELDS else "yes"
        lines.append(f"| `{name}` | {type_} | {in_manifest} | {doc} |")
    return "\n".join(lines) + "\n"


# Markdown for the README; generated so it always matches EXPORT_SCHEMA. All fields are required (non-null).
SCHEMA_DOC: str = _schema_doc()


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One card to export. ``qr_svg`` goes only into the ZIP (``qr/<escn>.svg``), not into the Parquet."""

    university: str
    pic: str
    academic_year: int
    matricola: str
    full_name: str
    esi: str
    escn: str
    card_type: str
    issued_at: dt.date
    expires_at: dt.date
    status: str
    qr_payload: str
    qr_png: bytes
    qr_svg: bytes
