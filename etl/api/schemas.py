"""Response models: they document the API in OpenAPI. Hot routes build their JSON by hand and only
declare these (FastAPI does not re-validate a Response it is handed), so the documentation costs
nothing per request; the tests check the bodies against the OpenAPI document."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from etl.domain.states import ExportKind, ExportStatus


class ErrorDetail(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["card not found"])
    param: str | None = Field(None, description="the parameter at fault, for 422 errors")


class ErrorOut(BaseModel):
    error: ErrorDetail


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: Literal["ok", "unreachable"]


class ExportFileOut(BaseModel):
    url: str = Field(description="download URL (bearer token required)")
    bytes: int
    sha256: str = Field(description="SHA-256 of the file, hex; also the download's ETag")


class ExportOut(BaseModel):
    id: str
    university: str
    academic_year: int
    kind: ExportKind
    since: dt.datetime | None = Field(description="incremental: cards changed after this instant (UTC)")
    until: dt.datetime = Field(description="cards changed up to this instant (UTC)")
    created_at: dt.datetime
    rows: int
    status: ExportStatus = Field(description="ready, or rebuild while its files are being rebuilt")
    parquet: ExportFileOut
    zip: ExportFileOut


class ExportListOut(BaseModel):
    exports: list[ExportOut]


class FeedItemOut(BaseModel):
    escn: str
    esi: str
    matricola: str | None
    university: str
    academic_year: int
    status: str = Field(description="ACTIVE, INACTIVE, or EXPIRED once expires_at is past")
    card_type: str
    issued_at: dt.date
    expires_at: dt.date
    changed_at: dt.datetime
    qr_payload: str
    qr: str | None = Field(None, description="qr=inline: the QR PNG, base64")
    qr_url: str | None = Field(None, description="qr=link: URL of the QR PNG (bearer token required)")


class FeedPageOut(BaseModel):
    items: list[FeedItemOut]
    next_cursor: str = Field(description="pass as cursor= to continue; keep it to poll for later changes")
    has_more: bool


class BadgeOut(BaseModel):
    university_code: str
    university_name: str
    full_name: str
    matricola: str
    course_name: str
    academic_year: int
    academic_year_label: str
    esi: str
    escn: str
    card_type: str
    issued_at: dt.date
    expires_at: dt.date
    status: str
    qr_payload: str


_ERROR_DESCRIPTIONS = {
    304: "not modified: the client's copy (If-None-Match) is current",
    401: "missing, malformed, unknown or revoked token",
    403: "the token lacks the scope, or the university filter names a university it does not cover",
    404: "no such resource, or one of a university the token does not cover (the same answer)",
    410: "the export expired (retention); list the current exports",
    416: "the Range lies outside the file",
    422: "a malformed parameter (the error names it)",
    429: "the token's rate limit is exceeded: retry after Retry-After seconds",
    503: "temporarily unavailable (an export file being rebuilt, or the database): retry later",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses=`` for the error statuses a route can answer (all in the ErrorOut shape)."""
    out: dict[int | str, dict[str, object]] = {}
    for status in statuses:
        entry: dict[str, object] = {"description": _ERROR_DESCRIPTIONS[status]}
        if status != 304:
            entry["model"] = ErrorOut
        out[status] = entry
    return out
