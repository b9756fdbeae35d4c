"""Vendor exports: list them, download their Parquet and ZIP files (exports:read).

Downloads are streamed from the verified file with ``ETag`` = its SHA-256, single ``Range`` support
and ``If-None-Match``. A missing or altered file is never a 500: the export is marked for rebuild
(``status='rebuild'``, picked up by the next ``export_files`` run) and the client gets a 503.
Every download request of an authenticated token leaves an ``api_audit`` row, committed before the
first byte is sent (with the bytes about to be sent; corrected if the client leaves midway).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AfterValidator, BeforeValidator
from starlette.concurrency import run_in_threadpool

from etl.api.audit import AuditUnavailable, audit_query
from etl.api.auth import Principal, require
from etl.api.context import ApiContext, ctx_of
from etl.api.errors import ApiError, not_found
from etl.api.files import FileProblem, FileRangeResponse
from etl.api.params import EXPORT_ID_PATTERN, UNIVERSITY_PATTERN, iso_datetime_only, naive_utc
from etl.api.queries import get_export, list_exports, mark_export_for_rebuild
from etl.api.ranges import RangeNotSatisfiable, etag_matches, if_range_allows, parse_range, quoted_etag
from etl.api.schemas import ExportListOut, error_responses
from etl.api.tokens import EXPORTS_READ
from etl.domain.states import ExportKind, ExportStatus

log = logging.getLogger("etl.api")

router = APIRouter(tags=["exports"])
Audit = Callable[..., Awaitable[int]]  # audit(status, nbytes=0): one committed api_audit row, its id
MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "zip": "application/zip"}
REBUILD_RETRY_AFTER = "300"

ExportId = Annotated[str, Path(pattern=EXPORT_ID_PATTERN, description="export id, as listed")]


def _iso(value: dt.datetime | None) -> str | None:
    # Full precision: a client passing created_at back as since= must not get the same export again.
    return None if value is None else value.isoformat(timespec="microseconds") + "Z"


def export_json(row: Any, base_url: str) -> dict[str, Any]:
    files = {
        which: {
            "url": f"{base_url}v1/exports/{row.id}/{which}",
            "bytes": getattr(row, f"{which}_bytes"),
            "sha256": getattr(row, f"{which}_sha256"),
        }
        for which in ("parquet", "zip")
    }
    return {
        "id": row.id,
        "university": row.institution,
        "academic_year": row.academic_year,
        "kind": row.kind,
        "since": _iso(row.since),
        "until": _iso(row.until),
        "created_at": _iso(row.created_at),
        "rows": row.rows,
        "status": row.status,
        **files,
    }


@router.get(
    "/v1/exports",
    response_model=ExportListOut,
    responses=error_responses(401, 403, 422, 429),
    summary="List the exports of the token's universities, newest first",
)
async def list_exports_route(
    request: Request,
    principal: Annotated[Principal, Depends(require(EXPORTS_READ))],
    university: Annotated[
        str | None, Query(pattern=UNIVERSITY_PATTERN, description="default: all the token's universities")
    ] = None,
    academic_year: Annotated[int | None, Query(ge=1900, le=2999, description="e.g. 2025 for 2025/26")] = None,
    since: Annotated[
        dt.datetime | None,
        BeforeValidator(iso_datetime_only),
        AfterValidator(naive_utc),
        Query(description="only exports created after this instant (ISO 8601; UTC if naive)"),
    ] = None,
    kind: Annotated[ExportKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    ctx = ctx_of(request)
    audit_query(
        request, "/v1/exports", university, university=university, academic_year=academic_year,
        since=since and since.isoformat(), kind=kind, limit=limit,
    )  # fmt: skip
    if university is not None and not principal.sees(university):
        raise ApiError(
            403,
            "forbidden_university",
            f"this token does not cover university {university!r}",
            param="university",
        )
    universities = [university] if university else sorted(principal.institutions)
    rows = await run_in_threadpool(
        list_exports,
        ctx.engine,
        universities,
        academic_year,
        since,
        kind,
        limit,
    )
    base = ctx.public_url
    body = {"exports": [export_json(r, base) for r in rows]}
    return Response(json.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


def _rebuilding(export_id: str) -> ApiError:
    return ApiError(
        503,
        "export_rebuilding",
        f"export {export_id} is being rebuilt; retry later or list the exports again",
        headers={"Retry-After": REBUILD_RETRY_AFTER},
    )


async def download(request: Request, principal: Principal, export_id: str, which: str) -> Response:
    ctx = ctx_of(request)
    client = request.client.host if request.client else None

    request.state.audited = True  # here: before the first byte, with the bytes about to be sent
    institution: str | None = None

    async def audit(status: int, nbytes: int = 0) -> int:
        try:
            return await ctx.audit.record(
                principal.token_id, f"download.{which}", export_id, status, nbytes, client, institution
            )
        except AuditUnavailable:
            message = "the read could not be audited, retry later"
            raise ApiError(503, "audit_unavailable", message, headers={"Retry-After": "30"}) from None

    row = await run_in_threadpool(get_export, ctx.engine, export_id)
    institution = row.institution if row is not None and principal.sees(row.institution) else None
    if row is None or not principal.sees(row.institution):
        await audit(404)
        raise not_found("export")
    if row.status == ExportStatus.EXPIRED:
        await audit(410)
        raise ApiError(410, "export_expired", f"export {export_id} has expired; list the current exports")
    if row.status == ExportStatus.REBUILD:
        await audit(503)
        raise _rebuilding(export_id)
    path, size, sha256 = (
        getattr(row, f"{which}_path"),
        getattr(row, f"{which}_bytes"),
        getattr(row, f"{which}_sha256"),
    )
    fd = await _open_or_mark(ctx, export_id, which, path, size, sha256, audit)
    response: Response | None = None
    try:
        response = await _respond(request, fd, export_id, which, size, sha256, audit)
        return response
    finally:
        if not isinstance(response, FileRangeResponse):  # else the response closes it once streamed
            os.close(fd)


async def _open_or_mark(
    ctx: ApiContext, export_id: str, which: str, path: str, size: int, sha256: str, audit: Audit
) -> int:
    try:
        return await run_in_threadpool(ctx.verifier.open_verified, path, size, sha256)
    except FileProblem as problem:
        # One line for the operators: ids and paths only, never card or personal data.
        log.error(
            "export %s: %s file %s is %s: marked for rebuild by the next export_files run",
            export_id,
            which,
            path,
            problem.reason,
        )
        await run_in_threadpool(mark_export_for_rebuild, ctx.engine, export_id)
        await audit(503)
        raise _rebuilding(export_id) from None


async def _respond(
    request: Request, fd: int, export_id: str, which: str, size: int, sha256: str, audit: Audit
) -> Response:
    etag = quoted_etag(sha256)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
        "Content-Disposition": f'attachment; filename="{export_id}.{which}"',
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        await audit(304)
        return Response(status_code=304, headers=headers)
    first, length, status = 0, size, 200
    if if_range_allows(request.headers.get("if-range"), etag):
        try:
            chosen = parse_range(request.headers.get("range"), size)
        except RangeNotSatisfiable:
            await audit(416)
            raise ApiError(
                416,
                "range_not_satisfiable",
                f"the file has {size} bytes",
                param="Range",
                headers={**headers, "Content-Range": f"bytes */{size}"},
            ) from None
        if chosen is not None:
            first, last = chosen
            length, status = last - first + 1, 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"

    announced = 0 if request.method == "HEAD" else length
    audit_id = await audit(status, announced)
    trail = ctx_of(request).audit

    async def done(sent: int) -> None:
        if sent != announced:  # the client went away midway: the row says what it really got
            await run_in_threadpool(trail.set_bytes, audit_id, sent)

    return FileRangeResponse(
        fd, first, length, status_code=status, headers=headers, media_type=MEDIA_TYPES[which], on_done=done
    )


def _download_route(which: str) -> None:
    async def route(
        request: Request,
        principal: Annotated[Principal, Depends(require(EXPORTS_READ))],
        export_id: ExportId,
    ) -> Response:
        return await download(request, principal, export_id, which)

    # GET and HEAD as two operations: one route with both methods gives both one operation id
    for method, verb in (("GET", "Download"), ("HEAD", "Headers of")):
        router.add_api_route(
            f"/v1/exports/{{export_id}}/{which}",
            route,
            methods=[method],
            name=f"download_{which}" if method == "GET" else f"head_{which}",
            summary=f"{verb} an export's {which.upper()} file (Range, If-None-Match)",
            response_class=Response,
            responses={
                200: {"content": {MEDIA_TYPES[which]: {}}, "description": "the file; ETag is its SHA-256"},
                206: {"content": {MEDIA_TYPES[which]: {}}, "description": "the requested byte range"},
                **error_responses(304, 401, 403, 404, 410, 416, 422, 429, 503),
            },
        )


for _which in MEDIA_TYPES:
    _download_route(_which)
