"""Vendor export files: one Parquet of cards and one ZIP of QR images with manifests and checksums."""

from etl.exports.schema import EXPORT_SCHEMA, MANIFEST_COLUMNS, MANIFEST_SCHEMA, SCHEMA_DOC, ExportRow
from etl.exports.writer import (
    ExportFile,
    ExportFiles,
    InvalidRowError,
    sha256_file,
    validate_row,
    verify_file,
    write_export,
)

__all__ = [
    "EXPORT_SCHEMA",
    "MANIFEST_COLUMNS",
    "MANIFEST_SCHEMA",
    "SCHEMA_DOC",
    "ExportFile",
    "ExportFiles",
    "ExportRow",
    "InvalidRowError",
    "sha256_file",
    "validate_row",
    "verify_file",
    "write_export",
]
