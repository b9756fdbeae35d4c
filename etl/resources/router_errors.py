"""Typed errors of the ESC Router client: callers branch on the class (or ``is_permanent`` /
``is_auth``), never on message text.

- ``is_permanent``: this item will fail the same way on every retry (bad body, unknown ESI, conflict):
  quarantine it and go on with the batch.
- ``is_auth``: every call of this university will fail (wrong key, wrong PIC, address not allow-listed):
  stop the run.
- otherwise (``RouterUnavailable``): the Router or the network is down; retry the run later.

Messages never contain the API key (the client scrubs any echo of it from answers it quotes) nor
request bodies (names, e-mails).
"""

from __future__ import annotations

from typing import ClassVar


class RouterError(Exception):
    kind: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        router_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code  # the Router's own code, e.g. ER-0019, when the answer carried one
        self.router_message = router_message

    @property
    def is_permanent(self) -> bool:
        return False

    @property
    def is_auth(self) -> bool:
        return False

    @property
    def stops_run(self) -> bool:
        """Every other call of this university would fail the same way: stop its run at once."""
        return self.is_auth

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class RouterAuthError(RouterError):
    """401/403: the key, its PIC or the source address is refused. Stop the run."""

    kind = "auth"

    @property
    def is_auth(self) -> bool:
        return True


class _PermanentError(RouterError):
    @property
    def is_permanent(self) -> bool:
        return True


class RouterBadRequest(_PermanentError):
    """400/422 and any other non-retryable 4xx (also a request the client refuses to send)."""

    kind = "bad_request"


class RouterNotFound(_PermanentError):
    kind = "not_found"


class RouterConflict(_PermanentError):
    """409: ER-0019 (person exists for our organisation) or ER-0002 (card number exists)."""

    kind = "conflict"


class RouterAccessDenied(_PermanentError):
    """403 carrying a Router code on one resource (``SE-0000``: the person belongs only to other
    organisations). Unlike an auth failure it concerns this item alone, so the batch goes on."""

    kind = "access_denied"


class RouterUnavailable(RouterError):
    """Retries exhausted, a non-retryable 5xx, a redirect, or an answer that is not what the API
    promises. ``last_cause`` describes the last failure as text: transport exceptions are not chained
    because aiohttp's carry the request headers, key included, in their repr."""

    kind = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        router_message: str | None = None,
        attempts: int = 1,
        last_cause: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, router_message=router_message)
        self.attempts = attempts
        self.last_cause = last_cause


def auth_error_message(
    status: int, *, institution: str, pic: str, api_key_env: str, method: str, path: str
) -> str:
    """What the operator must check, naming the university, the env var and the PIC (never the key)."""
    head = f"university {institution}: the ESC Router answered {status} to {method} {path}: "
    key_hint = f"check the API key in environment variable {api_key_env} and that it belongs to PIC {pic}"
    if status == 403:
        return (
            head + "forbidden. The production Router answers 403 to source addresses that are not "
            "allow-listed by the European Commission: check that this host's public address is allow-listed "
            f"for this organisation; also {key_hint}."
        )
    return head + f"the API key was refused: {key_hint}."


class RouterUnreachable(RouterUnavailable):
    """A call ran out of retries without ever connecting, and no call of this run has reached the
    Router: a wrong URL, DNS, a firewall, or the Router down. Stop the university's run."""

    kind = "unreachable"

    @property
    def stops_run(self) -> bool:
        return True
