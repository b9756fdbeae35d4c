"""``GET /v1/health``: no token; says whether the state DB answers, and the version."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from etl.api.context import ctx_of
from etl.api.schemas import HealthOut

try:
    VERSION = version("esc-sync")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"

router = APIRouter(tags=["health"])


@router.get(
    "/v1/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "the state DB does not answer"}},
    summary="Service health (no token needed)",
)
async def health(request: Request) -> Response:
    try:
        await ctx_of(request).reader.ping()
        body, status = {"status": "ok", "version": VERSION, "database": "ok"}, 200
    except SQLAlchemyError:
        body, status = {"status": "degraded", "version": VERSION, "database": "unreachable"}, 503
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
