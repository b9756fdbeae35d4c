"""One error shape for every failure: ``{"error": {"code": ..., "message": ..., "param"?: ...}}``.

FastAPI's own 422 (validation) and Starlette's 404/405 are rewritten into it, so clients parse one
format. Messages never carry personal data or secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("etl.api")

_LOCATION = {"query": "query parameter", "path": "path parameter", "header": "header", "body": "body"}
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    416: "range_not_satisfiable",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by routes and dependencies; turned into the JSON error by the handler below."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        err["param"] = param
    return {"error": err}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, param), status_code=status, headers=dict(headers or {}))


def not_found(what: str) -> ApiError:
    # The same body whether the resource is missing or belongs to a university the token cannot see.
    return ApiError(404, "not_found", f"{what} not found")


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """The first validation error as one line naming the parameter, and the parameter's name."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    where = _LOCATION.get(loc[0], loc[0]) if loc else "request"
    param = loc[1] if len(loc) > 1 else None
    msg = str(first.get("msg", "is invalid"))
    return (f"{where} {param!r}: {msg}" if param else f"{where}: {msg}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, param=exc.param, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return error_response(422, "invalid_parameter", message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        # A database outage (or an unmigrated one) is the operator's to fix and the client's to retry:
        # a 503, never a 500. The driver's first line only: no statement, no parameters.
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else "database error"
        log.error("state DB unavailable: %s: %s", type(exc.orig or exc).__name__, first)
        return error_response(
            503,
            "database_unavailable",
            "the service's database is unavailable, retry later",
            headers={"Retry-After": "30"},
        )
