"""The Router operations around cards and persons that esc-sync does not call but the Router's
document lists: ``csv-config``, ``validate-csv`` and the person pictures."""

from __future__ import annotations

import csv
import io

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image, UnidentifiedImageError

from etl.emulator.contract import (
    ApiError,
    CsvProblem,
    access_denied,
    csv_columns,
    invalid,
    not_found,
    validate_csv_rows,
)
from etl.emulator.state import EmulatorState, json_response, our_relation, path_esi
from etl.emulator.store import Relation

PICTURE_SIZE = (200, 300)


async def csv_config(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    return json_response(csv_columns())


async def validate_csv(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    """``CsvValidationError`` items, one per problem; an empty list when the file is valid."""
    operation = request.query.get("operation")
    if operation not in ("CREATE", "UPDATE", "DELETE"):
        return json_response([CsvProblem(0, "operation", "must be CREATE, UPDATE or DELETE").view()], 400)
    data = await _multipart_file(request)
    if data is None:
        return json_response([CsvProblem(0, "file", "a multipart file field is required").view()], 400)
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error):
        return json_response([CsvProblem(0, "file", "not a UTF-8 CSV file").view()], 400)

    def known(number: str) -> bool:
        card = state.store.card(number)
        return card is not None and not card.deleted and card.pic == pic

    problems = validate_csv_rows(rows, operation, pic, known)
    return json_response([p.view() for p in problems])


async def _multipart_file(request: web.Request) -> bytes | None:
    if not request.content_type.startswith("multipart/"):
        return None
    try:
        form = await request.post()
    except (ValueError, web.HTTPException, HttpProcessingError):  # a malformed multipart body
        return None
    field = form.get("file")
    if isinstance(field, web.FileField):
        return field.file.read()
    if isinstance(field, str | bytes):
        return field.encode() if isinstance(field, str) else field
    return None


def _picture_owner(request: web.Request, state: EmulatorState, pic: str) -> Relation:
    if request.match_info["id"] != pic:
        raise access_denied()  # another organisation's pictures
    return our_relation(state, path_esi(request), pic)


async def get_picture(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    rel = _picture_owner(request, state, pic)
    image = state.store.picture(rel.person_id, pic)
    if image is None:
        raise not_found("picture")
    return web.Response(body=image, content_type="application/octet-stream")


async def upload_picture(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    rel = _picture_owner(request, state, pic)
    resize = request.query.get("resize", "false").lower()
    if resize not in ("true", "false"):
        raise invalid("resize: true or false")
    data = await _multipart_file(request)
    if data is None:
        raise invalid("file: a multipart file field is required")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            picture: Image.Image = img
            if img.size != PICTURE_SIZE:
                if resize != "true":
                    raise invalid("file: must be a 200x300 image (or resize=true)")
                picture = img.resize(PICTURE_SIZE)
            out = io.BytesIO()
            picture.convert("RGB").save(out, format="JPEG", quality=85)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise invalid("file: not an image") from None
    state.store.put_picture(rel.person_id, pic, out.getvalue())
    return json_response("picture stored", 201)


async def delete_picture(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    """Idempotent: 204 whether or not a picture was there. The document lists no 404 here, so a
    person who is not ours answers 403."""
    try:
        rel = _picture_owner(request, state, pic)
    except ApiError as e:
        raise access_denied() if e.status == 404 else e from None
    state.store.delete_picture(rel.person_id, pic)
    return web.Response(status=204)
