"""The Router contract as pure rules: enums, error codes, body validation, paging and search parsing.

Nothing here touches HTTP or the database, so every rejection the emulator makes is testable on plain
values. Validation is deliberately at least as strict as the documented Router (nulls, unknown enums,
over-long strings are rejected) so that client bugs surface against the emulator first.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from etl.domain.escn import InvalidEscn, validate_escn
from etl.domain.esi import InvalidEsi, canonical_esi, validate_esi
from etl.domain.router_codes import ACADEMIC_LEVELS, CARD_TYPES, WRITABLE_CARD_STATUSES

MAX_STRING = 255
MAX_PAGE_SIZE = 10  # the Router silently caps page sizes at 10
MAX_GENERATED_ESCN = 100  # more per call answers 500 at the Router

IDENTIFIER_CODES = {"ESI": "European Student Identifier"}

# Error codes. ER-0002, ER-0019 and SE-0000 are the Router's documented ones. The rest are the
# emulator's own, in an "EMU-" namespace of their own so they can never clash with a Router code:
# clients branch on the HTTP status and the documented codes only.
CARD_EXISTS = "ER-0002"
PERSON_EXISTS = "ER-0019"
ACCESS_DENIED = "SE-0000"
INVALID_INPUT = "EMU-INVALID-INPUT"
PERSON_UNKNOWN = "EMU-PERSON-UNKNOWN"
NOT_FOUND = "EMU-NOT-FOUND"
SERVER_ERROR = "EMU-SERVER-ERROR"
UNAUTHORIZED = "EMU-UNAUTHORIZED"
ADDRESS_NOT_ALLOWED = "EMU-ADDRESS-NOT-ALLOWED"
INT32_MAX = 2**31 - 1  # paging and count parameters are int32 in the Router's document

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PIC_RE = re.compile(r"^[0-9]{9}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
_SEARCH_SEP = re.compile(r"<[+ ]>")  # "<+>" arrives as "< >" when the client leaves "+" unencoded


class ApiError(Exception):
    """An error answer: HTTP status plus the Router's ``{code, message}`` body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def invalid(message: str) -> ApiError:
    return ApiError(400, INVALID_INPUT, message)


def unauthorized(message: str = "missing or unknown API key") -> ApiError:
    return ApiError(401, UNAUTHORIZED, message)


def not_found(what: str) -> ApiError:
    return ApiError(404, NOT_FOUND, f"{what} not found")


def access_denied() -> ApiError:
    return ApiError(403, ACCESS_DENIED, "access denied")


def address_not_allowed() -> ApiError:
    return ApiError(403, ADDRESS_NOT_ALLOWED, "source address not in the organisation's allow-list")


def esi_key(esi: str) -> str:
    """The lookup key of an ESI: the prefix is case-insensitive, the rest exact."""
    return canonical_esi(esi)


@dataclass(frozen=True)
class PersonInput:
    identifier: str
    full_name: str | None
    email: str | None
    academic_level: str | None


@dataclass(frozen=True)
class CardInput:
    card_number: str | None
    person_identifier: str
    status: str
    card_type: str
    issued_at: dt.date
    expires_at: dt.date
    display_name: str | None
    processor_identifier: str | None


def parse_person(body: Any, key_pic: str) -> PersonInput:
    """A PersonUpdateView for the caller's organisation (401 when it names another organisation)."""
    obj = _object(body, "body")
    identifier = _required_str(obj, "identifier")
    try:
        validate_esi(identifier)
    except InvalidEsi as e:
        raise invalid(f"identifier: {e}") from None
    code = _optional_str(obj, "identifierCode")
    if code is not None and code not in IDENTIFIER_CODES:
        raise invalid(f"identifierCode: {code!r} is not one of {sorted(IDENTIFIER_CODES)}")
    _optional_str(obj, "fullName")  # accepted at top level too; the relation's fullName is what counts
    relations = obj.get("personOrganisationUpdateViews")
    if not isinstance(relations, list) or not relations:
        raise invalid("personOrganisationUpdateViews: a non-empty list is required")
    for i, entry in enumerate(relations):
        pic = _required_str(_object(entry, f"personOrganisationUpdateViews[{i}]"), "organisationIdentifier")
        if pic != key_pic:
            raise unauthorized("organisationIdentifier does not match the organisation of the API key")
    if len(relations) > 1:
        raise invalid("personOrganisationUpdateViews: our organisation appears more than once")
    rel = relations[0]
    level = _optional_str(rel, "academicLevel")
    if level is not None and level not in ACADEMIC_LEVELS:
        raise invalid(f"academicLevel: {level!r} is not one of {sorted(ACADEMIC_LEVELS)}")
    email = _optional_str(rel, "email")
    if email is not None and not _EMAIL_RE.match(email):
        raise invalid("email: not an e-mail address")
    full_name = _optional_str(rel, "fullName")
    if full_name is not None and not full_name.strip():
        raise invalid("fullName: empty (omit the field instead)")
    return PersonInput(
        identifier=identifier,
        full_name=full_name,
        email=email,
        academic_level=level,
    )


def parse_card(body: Any, key_pic: str, *, create: bool = True) -> CardInput:
    """A CardUpdateView issued by the caller's organisation (401 when it names another issuer).
    ``cardNumber`` is POST only (the document: "(POST ONLY)"); a PUT names the card in its path."""
    obj = _object(body, "body")
    if not create and "cardNumber" in obj:
        raise invalid("cardNumber: only on POST; a PUT names the card in its path")
    issuer = _required_str(obj, "issuerIdentifier")
    if issuer != key_pic:
        raise unauthorized("issuerIdentifier does not match the organisation of the API key")
    number = _optional_str(obj, "cardNumber")
    if number is not None:
        try:
            validate_escn(number, key_pic)
        except InvalidEscn as e:
            raise invalid(f"cardNumber: {e}") from None
    person = _required_str(obj, "personIdentifier")
    try:
        validate_esi(person)
    except InvalidEsi as e:
        raise invalid(f"personIdentifier: {e}") from None
    status = _required_str(obj, "cardStatusType")
    if status not in WRITABLE_CARD_STATUSES:
        raise invalid(f"cardStatusType: {status!r} is not one of {list(WRITABLE_CARD_STATUSES)}")
    card_type = _required_str(obj, "cardType")
    if card_type not in CARD_TYPES:
        raise invalid(f"cardType: {card_type!r} is not one of {sorted(CARD_TYPES)}")
    issued = _date(obj, "issuedAt")
    expires = _date(obj, "expiresAt")
    if expires < issued:
        raise invalid("expiresAt is before issuedAt")
    return CardInput(
        card_number=number,
        person_identifier=person,
        status=status,
        card_type=card_type,
        issued_at=issued,
        expires_at=expires,
        display_name=_optional_str(obj, "displayName"),
        processor_identifier=_optional_str(obj, "processorIdentifier"),
    )


def read_status(stored: str, expires_at: dt.date, today: dt.date) -> str:
    """EXPIRED once the expiry day is over; so a card is revived only by a future expiresAt."""
    return "EXPIRED" if expires_at < today else stored


@dataclass(frozen=True)
class PageRequest:
    number: int
    size: int
    sort: str | None
    descending: bool


def parse_page(query: dict[str, str], sortable: tuple[str, ...]) -> PageRequest:
    number = _query_int(query, "page", 0, minimum=0)
    size = min(_query_int(query, "size", MAX_PAGE_SIZE, minimum=1), MAX_PAGE_SIZE)
    sort = query.get("sort") or None
    if sort is not None:
        # Spring also accepts "field,asc"
        sort, _, inline_dir = sort.partition(",")
        if sort not in sortable:
            raise invalid(f"sort: {sort!r} is not one of {list(sortable)}")
    else:
        inline_dir = ""
    direction = (query.get("direction") or inline_dir or "ASC").upper()
    if direction not in ("ASC", "DESC"):
        raise invalid("direction: must be ASC or DESC")
    return PageRequest(number=number, size=size, sort=sort, descending=direction == "DESC")


def raw_query_param(raw_query: str, name: str) -> str | None:
    """A query parameter decoded without turning "+" into a space ("+" is URN-safe in an ESI)."""
    for part in raw_query.split("&"):
        key, _, value = part.partition("=")
        if unquote(key) == name:
            return unquote(value)
    return None


def parse_card_search(search: str | None) -> str | None:
    """The ESI of ``person.identifierCode:ESI<+>person.identifier:<esi>``, or None without a filter."""
    if not search:
        return None
    esi: str | None = None
    for term in _SEARCH_SEP.split(search):
        key, sep, value = term.partition(":")
        if not sep:
            raise invalid(f"search: term {key!r} is not key:value")
        if key == "person.identifierCode":
            if value not in IDENTIFIER_CODES:
                raise invalid(
                    f"search: person.identifierCode {value!r} is not one of {sorted(IDENTIFIER_CODES)}"
                )
        elif key == "person.identifier":
            esi = value
        else:
            raise invalid(f"search: unsupported key {key!r}")
    if esi is None:
        raise invalid("search: person.identifier is required")
    return esi


def parse_generate(query: dict[str, str], key_pic: str) -> tuple[int, int]:
    """(prefix, count) of a generate-escn call; over 100 numbers is a 500, as at the Router."""
    pic = query.get("pic")
    if not pic or not _PIC_RE.match(pic):
        raise invalid("pic: exactly 9 digits required")
    if pic != key_pic:
        raise unauthorized("pic does not match the organisation of the API key")
    if not query.get("prefix"):
        raise invalid("prefix: required")
    prefix = _query_int(query, "prefix", 1, minimum=0)
    if prefix > 999:
        raise invalid("prefix: at most 3 digits")
    count = _query_int(query, "numberOfESCN", 1, minimum=1)
    if count > MAX_GENERATED_ESCN:
        raise ApiError(500, SERVER_ERROR, "Internal Server Error")
    return prefix, count


def _query_int(query: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if len(raw) > 12:  # int() of thousands of digits is slow; nothing that long fits an int32
        raise invalid(f"{name}: not an int32")
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"{name}: not an integer") from None
    if value < minimum:
        raise invalid(f"{name}: must be at least {minimum}")
    if value > INT32_MAX:
        raise invalid(f"{name}: at most {INT32_MAX} (int32)")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{where}: a JSON object is required")
    return value


def _optional_str(obj: dict[str, Any], name: str) -> str | None:
    if name not in obj:
        return None
    value = obj[name]
    if value is None:
        raise invalid(f"{name}: omit the field rather than sending null")
    if not isinstance(value, str):
        raise invalid(f"{name}: must be a string")
    if len(value) > MAX_STRING:
        raise invalid(f"{name}: at most {MAX_STRING} characters")
    return value


def _required_str(obj: dict[str, Any], name: str) -> str:
    value = _optional_str(obj, name)
    if value is None or not value.strip():
        raise invalid(f"{name}: required")
    return value


def _date(obj: dict[str, Any], name: str) -> dt.date:
    raw = _required_str(obj, name)
    if not _DATE_RE.match(raw):
        raise invalid(f"{name}: {raw!r} is not a yyyy-MM-dd date")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise invalid(f"{name}: {raw!r} is not a valid date") from None


# --- CSV validation (``csv-config`` / ``validate-csv``) ----------------------------------------------

CSV_COLUMNS = (
    "cardNumber",
    "personIdentifier",
    "cardType",
    "cardStatusType",
    "issuedAt",
    "expiresAt",
    "issuerIdentifier",
    "displayName",
    "processorIdentifier",
)


def csv_columns() -> dict[str, int]:
    """The answer of ``csv-config``: column name → 0-based position in a ``validate-csv`` file."""
    return {name: i for i, name in enumerate(CSV_COLUMNS)}


@dataclass(frozen=True)
class CsvProblem:
    row: int  # 1-based data row; 0 for the file as a whole
    field: str
    message: str

    def view(self) -> dict[str, Any]:
        """A ``CsvValidationError``."""
        return {"rowNumber": self.row, "fieldName": self.field, "errorMessage": self.message, "params": {}}


def validate_csv_rows(
    rows: list[list[str]], operation: str, key_pic: str, known_card: Callable[[str], bool]
) -> list[CsvProblem]:
    """Each data row checked as the card operation it stands for; a first row of column names is a
    header. Messages name fields, never values (rows carry personal identifiers)."""
    if rows and rows[0][:1] == [CSV_COLUMNS[0]]:
        rows = rows[1:]
    problems: list[CsvProblem] = []
    for n, row in enumerate(rows, 1):
        if len(row) > len(CSV_COLUMNS):
            problems.append(CsvProblem(n, "row", f"at most {len(CSV_COLUMNS)} columns"))
            continue
        fields = {name: value for name, value in zip(CSV_COLUMNS, row, strict=False) if value != ""}
        number = fields.pop("cardNumber", None)
        try:
            if operation != "CREATE":
                if number is None:
                    raise invalid("cardNumber: required")
                if not known_card(number):
                    raise ApiError(404, NOT_FOUND, "cardNumber: card not found")
            if operation == "CREATE":
                parse_card(fields | ({"cardNumber": number} if number else {}), key_pic)
            elif operation == "UPDATE":
                parse_card(fields, key_pic)
        except ApiError as e:
            name, sep, _ = e.message.partition(":")
            problems.append(CsvProblem(n, name if sep else "row", e.message))
    return problems
