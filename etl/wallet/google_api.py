"""The few Google Wallet REST API calls esc-sync makes (Google's "Google Wallet API" reference):
``genericClass`` get and insert (the university's class, made once), ``genericObject`` patch (a
card's object follows the card). Authenticated with an OAuth 2.0 access token that the service
account's key obtains by the JWT bearer grant at the key's ``token_uri``.

Objects are only ever *patched*: a student's object exists at Google once the student saved it
through the "Save to Google Wallet" link (whose JWT carries the object); a 404 means nobody holds
it, and nothing of that student is sent to Google.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import httpx

from etl.wallet.google import GoogleIssuer

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class GoogleWalletError(Exception):
    """A call Google refused or could not answer: one line, the status and Google's reason only.
    ``transient``: Google unreachable, overloaded or failing (waiting may help), not refusing."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Patched(StrEnum):
    UPDATED = "updated"  # the object someone saved now shows the card as it is
    NOT_SAVED = "not_saved"  # nobody saved this card's pass: nothing to update


class GoogleWalletClient:
    def __init__(self, issuer: GoogleIssuer, api_url: str, *, timeout_s: float = 10.0) -> None:
        self.issuer = issuer
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.http = httpx.Client(timeout=timeout_s)
        self._token: tuple[str, dt.datetime] | None = None  # the access token and when to renew it

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GoogleWalletClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _bearer(self) -> str:
        now = dt.datetime.now(dt.UTC)
        if self._token is None or now >= self._token[1]:
            answer = self._send(
                "POST", self.issuer.token_uri,
                data={"grant_type": GRANT, "assertion": self.issuer.token_assertion(now)},
            )  # fmt: skip
            try:
                body = answer.json()
                token, lifetime = str(body["access_token"]), int(body.get("expires_in", 3600))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise GoogleWalletError(
                    "google wallet: the token answer is unreadable", transient=True
                ) from None
            self._token = (token, now + dt.timedelta(seconds=max(lifetime - 60, 0)))
        return self._token[0]

    def _send(self, method: str, url: str, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """The answer when it is a success or one of ``ok``; else a GoogleWalletError."""
        try:
            answer = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as e:
            raise GoogleWalletError(
                f"google wallet unreachable: {type(e).__name__}", transient=True
            ) from None
        status = answer.status_code
        if status >= 400 and status not in ok:
            transient = status >= 500 or status == 429
            raise GoogleWalletError(f"google wallet: HTTP {status} {_reason(answer)}", transient=transient)
        return answer

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> httpx.Response:
        url = self.api_url + path
        answer = self._send(method, url, (401, 404), json=body, headers=self._auth())
        if answer.status_code == 401:  # the token was revoked or expired early: one fresh try
            self._token = None
            answer = self._send(method, url, (404,), json=body, headers=self._auth())
        return answer

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._bearer()}"}

    def ensure_class(self, body: Mapping[str, Any]) -> bool:
        """The class exists afterwards; True when it was inserted now."""
        if self._call("GET", f"genericClass/{quote(str(body['id']), safe='')}").status_code == 200:
            return False
        answer = self._call("POST", "genericClass", body)
        if answer.status_code == 404:
            raise GoogleWalletError(
                "google wallet: HTTP 404 on genericClass insert (wrong api_url?)", transient=False
            )
        return True

    def patch_object(self, object_id: str, body: Mapping[str, Any]) -> Patched:
        answer = self._call("PATCH", f"genericObject/{quote(object_id, safe='')}", body)
        return Patched.NOT_SAVED if answer.status_code == 404 else Patched.UPDATED


def _reason(answer: httpx.Response) -> str:
    """Google's error reason (``error.status`` or OAuth's ``error``), never its message (it may quote
    what was sent)."""
    try:
        error = answer.json().get("error")
    except ValueError:
        return ""
    if isinstance(error, Mapping):
        return str(error.get("status") or "")[:40]
    return str(error or "")[:40]
