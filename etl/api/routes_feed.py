"""``GET /v1/feed``: the incremental QR feed of one university, cursor-paged (exports:read).

Cards in (changed_at, ESCN) order; ``next_cursor`` resumes right after the last item, so paging to
the end returns every card once, and polling later with the last cursor returns only what changed.
Cards changed within the last ``feed_settle`` are held back: a writer's transaction commits after
it stamps ``changed_at``, and a cursor must never move past a row that is still to appear.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from etl.api.audit import audit_query
from etl.api.auth import Principal, require
from etl.api.context import ctx_of
from etl.api.cursor import FeedPosition, InvalidCursor, decode_cursor, encode_cursor, start
from etl.api.errors import ApiError
from etl.api.params import UNIVERSITY_PATTERN
from etl.api.queries import feed_page
from etl.api.schemas import FeedPageOut, error_responses
from etl.api.tokens import EXPORTS_READ
from etl.render.badge_source import display_status, qr_png
from etl.render.qr import qr_payload
from etl.store.models import utcnow

router = APIRouter(tags=["feed"])


def feed_item(row: Any, university: str, base_url: str, qr: str, api_base: str, today: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "escn": row.escn,
        "esi": row.esi,
        "matricola": row.matricola,
        "university": university,
        "academic_year": row.academic_year,
        "status": display_status(row.desired_status, row.expires_at, today),
        "card_type": row.card_type,
        "issued_at": row.issued_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "changed_at": row.changed_at.isoformat(timespec="microseconds") + "Z",
        "qr_payload": qr_payload(row.escn, base_url),
    }
    if qr == "inline":
        png = qr_png(row.escn, base_url, row.payload, row.png)
        item["qr"] = base64.b64encode(png).decode("ascii")
    else:
        item["qr_url"] = f"{api_base}v1/cards/{row.escn}/qr.png"
    return item


@router.get(
    "/v1/feed",
    response_model=FeedPageOut,
    responses=error_responses(401, 403, 422, 429),
    summary="Incremental QR feed of a university's cards, cursor-paged",
)
async def feed(
    request: Request,
    principal: Annotated[Principal, Depends(require(EXPORTS_READ))],
    university: Annotated[str, Query(pattern=UNIVERSITY_PATTERN, description="university code")],
    cursor: Annotated[
        str | None,
        Query(max_length=400, description="next_cursor of the previous page; none: from the start"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    qr: Annotated[Literal["inline", "link"], Query(description="QR PNG as base64, or a URL")] = "link",
) -> Response:
    ctx = ctx_of(request)
    audit_query(request, "/v1/feed", university, university=university, cursor=cursor, limit=limit, qr=qr)
    if not principal.sees(university):
        raise ApiError(
            403,
            "forbidden_university",
            f"this token does not cover university {university!r}",
            param="university",
        )
    position = start(university)
    if cursor:
        try:
            position = decode_cursor(cursor)
        except InvalidCursor as exc:
            raise ApiError(
                422, "invalid_parameter", f"query parameter 'cursor': {exc}", param="cursor"
            ) from None
        if position.university != university:
            raise ApiError(
                422,
                "invalid_parameter",
                "query parameter 'cursor': it belongs to another university's feed",
                param="cursor",
            )
    at, escn = position.changed_at, position.escn
    after = None if at is None or escn is None else (at, escn)
    until = utcnow() - ctx.feed_settle
    rows = await run_in_threadpool(feed_page, ctx.engine, university, after, until, limit + 1, qr == "inline")
    has_more = len(rows) > limit
    rows = rows[:limit]
    base_url, api_base, today = ctx.settings.qr_base_url, ctx.public_url, ctx.today()
    items = [feed_item(r, university, base_url, qr, api_base, today) for r in rows]
    if rows:
        position = FeedPosition(university, rows[-1].changed_at, rows[-1].escn)
    body = {"items": items, "next_cursor": encode_cursor(position), "has_more": has_more}
    return Response(json.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})
