"""European Student Identifier (ESI): composition and validation.

``urn:schac:personalUniqueCode:int:esi:<scope>:<code>``. Italian ESIs are scoped by the institution's
schacHomeOrganization (a domain), since Italy has no national student number. An ESI can never change
once registered, so composition is strict; validation also accepts other countries' ESIs.
"""

from __future__ import annotations

import re
from typing import NamedTuple

ESI_PREFIX = "urn:schac:personalUniqueCode:int:esi:"
MAX_ESI_LENGTH = 255

# RFC 2141 <trans> minus the reserved and escape characters ("%", "/", "?", "#"): the ESI travels raw
# (not percent-encoded) in Router URL paths, so an escape or a slash would change what the server reads.
_CODE_RE = re.compile(r"^[A-Za-z0-9()+,\-.:=@;$_!*']+$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"^(?=.{{3,253}}$)(?:{_LABEL}\.)+[a-z]{{2,63}}$")
_COUNTRY_RE = re.compile(r"^[A-Za-z]{2}$")


class EsiWriteBack(NamedTuple):
    """An ESI to store on an Esse3 career (``CODICE_ESI``). ``previous``: the ESI esc-sync wrote there
    before (the career changed person), which may be replaced; any other ESI there never is."""

    stu_id: int
    esi: str
    previous: str | None = None


class InvalidEsi(ValueError):
    """The value is not a valid ESI; the message says why (it never repeats a whole personal code)."""


def compose_esi(schac_home_organization: str, person_code: str | int) -> str:
    """Build a domain-scoped ESI. ``person_code`` must be a person-level key that survives new careers."""
    if not isinstance(schac_home_organization, str) or not schac_home_organization:
        raise InvalidEsi("schacHomeOrganization is empty")
    if schac_home_organization != schac_home_organization.lower():
        raise InvalidEsi("schacHomeOrganization must be lower case")
    if not _DOMAIN_RE.fullmatch(schac_home_organization):
        raise InvalidEsi(f"schacHomeOrganization {schac_home_organization!r} is not an internet domain")
    if isinstance(person_code, bool) or not isinstance(person_code, str | int):
        raise InvalidEsi(f"person code must be a string or an integer, not {type(person_code).__name__}")
    if isinstance(person_code, int):
        if person_code < 0:
            raise InvalidEsi("person code must not be negative")
        person_code = str(person_code)
    _check_code(person_code)
    esi = f"{ESI_PREFIX}{schac_home_organization}:{person_code}"
    _check_length(esi)
    return esi


def validate_esi(esi: str) -> None:
    """Raise InvalidEsi unless ``esi`` is a well-formed ESI (prefix compared case-insensitively)."""
    scope, code = _split(esi)
    _check_scope(scope)
    _check_code(code)


def esi_scope(esi: str) -> str:
    """The scope (country code or domain) of a valid ESI, as written."""
    validate_esi(esi)
    return _split(esi)[0]


def same_esi(a: str, b: str) -> bool:
    """Equal ESIs: the prefix is case-insensitive, scope and code are compared exactly."""
    return canonical_esi(a) == canonical_esi(b)


def canonical_esi(esi: str) -> str:
    """The ESI with its ``urn:schac:...:esi:`` prefix spelled as the standard does (it is
    case-insensitive); scope and code as they are."""
    if esi[: len(ESI_PREFIX)].lower() == ESI_PREFIX.lower():
        return ESI_PREFIX + esi[len(ESI_PREFIX) :]
    return esi


def _split(esi: str) -> tuple[str, str]:
    if not isinstance(esi, str):
        raise InvalidEsi(f"ESI must be a string, not {type(esi).__name__}")
    _check_length(esi)
    if esi[: len(ESI_PREFIX)].lower() != ESI_PREFIX.lower():
        raise InvalidEsi(f"ESI must start with {ESI_PREFIX!r}")
    scope, sep, code = esi[len(ESI_PREFIX) :].partition(":")
    if not sep:
        raise InvalidEsi("ESI must be <prefix><scope>:<code>: the ':' after the scope is missing")
    return scope, code


def _check_scope(scope: str) -> None:
    if not scope:
        raise InvalidEsi("ESI scope is empty")
    if _COUNTRY_RE.fullmatch(scope) or _DOMAIN_RE.fullmatch(scope.lower()):
        return
    raise InvalidEsi(f"ESI scope {scope!r} is neither a 2-letter country code nor an internet domain")


def _check_code(code: str) -> None:
    if not code:
        raise InvalidEsi("ESI code is empty")
    if not _CODE_RE.fullmatch(code):
        bad = sorted({c for c in code if not _CODE_RE.fullmatch(c)})
        raise InvalidEsi(
            f"ESI code contains characters that are not URN-safe (RFC 2141): {''.join(bad)!r}; "
            "allowed: letters, digits and ()+,-.:=@;$_!*'"
        )


def _check_length(esi: str) -> None:
    if len(esi) > MAX_ESI_LENGTH:
        raise InvalidEsi(f"ESI is {len(esi)} characters long, at most {MAX_ESI_LENGTH} are allowed")
