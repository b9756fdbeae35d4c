"""Apple's pass web service, so a device holding a card's pass fetches it again when the card changes
(Apple's "Wallet Passes Web Service" reference: register and unregister a device, the serial numbers
changed since a tag, the latest pass, the device's log). Served under ``<public_url>apple/``, the
pass's ``webServiceURL``; enabled by ``ESC_SYNC_WALLET_SECRET``.

Devices authenticate with ``Authorization: ApplePass <authenticationToken>``, the HMAC the pass
carries (etl.wallet.apple.pass_auth_token); a wrong one is a 401 and counts as a failed
authentication of the address (etl.api.throttles). Nothing here is in the OpenAPI document: Apple,
not our clients, defines it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from etl.api.context import ApiContext, ctx_of
from etl.api.errors import ApiError
from etl.api.params import ESCN_PATTERN
from etl.api.routes_badges import PKPASS, pass_response
from etl.store import wallet as store
from etl.wallet.apple import token_matches
from etl.wallet.follow import pass_path

log = logging.getLogger("etl.api")
router = APIRouter(prefix="/apple/v1", include_in_schema=False)

Device = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
PassType = Annotated[str, Path(pattern=r"^[A-Za-z0-9.-]{1,255}$")]
Serial = Annotated[str, Path(pattern=ESCN_PATTERN)]


def _authorised(request: Request, pass_type_id: str, serial: str) -> ApiContext:
    """The device's ApplePass token for this pass, or 401 (and a failed authentication counted)."""
    ctx = ctx_of(request)
    client = request.client.host if request.client else "unknown"
    if (wait := ctx.auth.failures.wait(client)) > 0:
        raise ApiError(429, "rate_limited", "too many failed authentications from this address",
                       headers={"Retry-After": str(max(1, int(wait) + 1))})  # fmt: skip
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    known = ctx.wallet_secret is not None and any(
        s.pass_type_identifier == pass_type_id for s in ctx.wallet_signers.values()
    )
    if not (
        known
        and scheme == "ApplePass"
        and token_matches(ctx.wallet_secret or b"", pass_type_id, serial, token)
    ):
        ctx.auth.failures.failed(client)
        raise ApiError(401, "unauthorized", "the pass's authentication token is required")
    return ctx


@router.post("/devices/{device}/registrations/{pass_type_id}/{serial}")
async def register(
    request: Request,
    device: Device,
    pass_type_id: PassType,
    serial: Serial,
    push_token: Annotated[str, Body(embed=True, alias="pushToken", max_length=255)],
) -> Response:
    ctx = _authorised(request, pass_type_id, serial)
    if await ctx.reader.card_by_escn(serial) is None:  # not (or no longer) a card we show
        raise ApiError(404, "not_found", "pass not found")

    def write() -> bool:
        with ctx.engine.begin() as conn:
            return store.register(conn, device, pass_type_id, serial, push_token)

    return Response(status_code=201 if await run_in_threadpool(write) else 200)


@router.delete("/devices/{device}/registrations/{pass_type_id}/{serial}")
async def unregister(request: Request, device: Device, pass_type_id: PassType, serial: Serial) -> Response:
    ctx = _authorised(request, pass_type_id, serial)

    def write() -> None:
        with ctx.engine.begin() as conn:
            store.unregister(conn, device, pass_type_id, serial)

    await run_in_threadpool(write)
    return Response(status_code=200)


@router.get("/devices/{device}/registrations/{pass_type_id}")
async def changed(
    request: Request,
    device: Device,
    pass_type_id: PassType,
    passes_updated_since: Annotated[str | None, Query(alias="passesUpdatedSince", max_length=40)] = None,
) -> Response:
    """Which of the device's passes changed since the tag it got last time (no token: Apple sends
    none here; the answer holds only card numbers the device already has)."""
    ctx = ctx_of(request)
    try:
        since = dt.datetime.fromisoformat(passes_updated_since) if passes_updated_since else None
    except ValueError:
        raise ApiError(
            422, "invalid_parameter", "passesUpdatedSince: not a tag we gave", param="passesUpdatedSince"
        ) from None

    def read() -> tuple[list[str], dt.datetime | None]:
        with ctx.engine.connect() as conn:
            return store.changed_since(conn, device, pass_type_id, since)

    serials, latest = await run_in_threadpool(read)
    if not serials or latest is None:
        return Response(status_code=204)
    body = {"serialNumbers": serials, "lastUpdated": latest.isoformat(timespec="microseconds")}
    return Response(json.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/passes/{pass_type_id}/{serial}")
async def latest_pass(request: Request, pass_type_id: PassType, serial: Serial) -> Response:
    """The card's pass as it is now; a retired card's is the voided one the wallet_passes asset
    stored (etl.wallet.follow); an erased card's is gone."""
    ctx = _authorised(request, pass_type_id, serial)
    row = await ctx.reader.card_by_escn(serial)

    def read() -> Any:
        with ctx.engine.connect() as conn:
            return store.stored_pass(conn, serial)

    stored = await run_in_threadpool(read)
    file = pass_path(ctx.settings.home, stored.institution, serial) if stored is not None else None
    if row is None and (file is None or not file.exists()):
        raise ApiError(404, "not_found", "pass not found")
    # HTTP dates have whole seconds: Last-Modified is the second the pass changed in, and only a copy
    # from after the change itself is "not modified" (two changes within a second are not mistaken
    # for one; a copy fetched in the second of its change is sent again, 3 KB).
    updated = stored.apple_updated_at if stored is not None else None
    changed_at = (updated or dt.datetime.now(dt.UTC)).replace(tzinfo=dt.UTC)
    last_modified = email.utils.format_datetime(changed_at.replace(microsecond=0), usegmt=True)
    since = request.headers.get("if-modified-since")
    if since:
        try:
            if email.utils.parsedate_to_datetime(since) >= changed_at:
                return Response(status_code=304, headers={"Last-Modified": last_modified})
        except (TypeError, ValueError):
            pass
    if row is None and file is not None:  # a retired card: the voided pass stored for it
        response = Response(file.read_bytes(), media_type=PKPASS, headers={"Cache-Control": "no-store"})
    else:
        response = await pass_response(ctx, row)
    response.headers["Last-Modified"] = last_modified
    return response


@router.post("/log")
async def device_log(logs: Annotated[list[str], Body(embed=True, max_length=100)]) -> Response:
    # What devices report (URLs, errors) is theirs: a count only, never the messages.
    log.warning("apple wallet: %d log message(s) from a device", len(logs))
    return Response(status_code=200)
