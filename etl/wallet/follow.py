"""Wallet passes follow their cards (the ``wallet_passes`` asset): for each card of a partition whose
pass now reads differently from what was last stored, the Apple pass is built again and stored
private (``<home>/wallet/<university>/<ESCN>.pkpass``, 0600), the devices holding it are pushed
(``[wallet] apns_push``), and its Google Wallet object is patched. What changed is decided by digests
of ``pass.json`` and of the Google object (``wallet_passes``), so a second run builds and sends nothing.

A retired card (its career now names another person) keeps a voided pass without a name. An erased
card's pass is withdrawn (``withdraw``): its file deleted, its Google object scrubbed (Google keeps
objects: they can only be changed), its row dropped; by the erasure itself, and here for any the
erasure could not finish.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from etl.config import Ateneo, Settings
from etl.files import fsync_directory, write_atomically
from etl.partitions import Partition
from etl.render.badge_source import pass_card
from etl.store import wallet as store
from etl.store.models import utcnow
from etl.wallet.apns import ApnsClient, Pushed
from etl.wallet.apple import PassCard, PassSigner, build_pkpass, pass_auth_token, pass_images, pass_json
from etl.wallet.google import SCRUBBED, GoogleIssuer
from etl.wallet.google_api import GoogleWalletClient, GoogleWalletError
from etl.wallet.policy import WALLET_SECRET_ENV

CHUNK = 500  # states committed together: a crash redoes at most this many passes
_KEPT = ("apple_digest", "apple_updated_at", "pushed_digest", "google_digest")


def pass_path(home: Path, institution: str, escn: str) -> Path:
    return home / "wallet" / institution / f"{escn}.pkpass"


def digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class WalletRunResult:
    cards: int = 0
    apple_built: int = 0
    google_updated: int = 0
    google_not_saved: int = 0  # changed, but nobody saved that card's pass to Google Wallet
    pushed: int = 0  # devices notified
    devices_gone: int = 0  # registrations APNs says are dead: forgotten
    scrubbed: int = 0  # erased or vanished cards whose passes were withdrawn
    failed: Counter[str] = field(default_factory=Counter)  # reason → count (no personal data)
    refused: int = 0  # of the failures, those Google refused (waiting will not help)

    def fail(self, error: GoogleWalletError) -> None:
        self.failed[str(error)] += 1
        self.refused += not error.transient


@dataclass
class Wallets:
    """One university's wallets for one run: whatever of them is configured."""

    signer: PassSigner | None = None
    images: dict[str, bytes] = field(default_factory=dict)
    service: Mapping[str, str] = field(default_factory=dict)  # Apple's web service URL, when on
    secret: bytes | None = None
    google_issuer: GoogleIssuer | None = None
    google: GoogleWalletClient | None = None
    apns: ApnsClient | None = None

    @classmethod
    def google_only(cls, ateneo: Ateneo) -> Wallets:
        """What withdrawing an erased card's passes needs: its Google object to scrub."""
        w = cls()
        if ateneo.google_wallet is not None:
            w.google_issuer = ateneo.google_wallet.issuer()
            w.google = GoogleWalletClient(w.google_issuer, ateneo.google_wallet.api_url)
        return w

    @classmethod
    def of(cls, settings: Settings, ateneo: Ateneo, logo_png: bytes | None) -> Wallets:
        w = cls.google_only(ateneo)
        if ateneo.apple_wallet is not None:
            w.signer = ateneo.apple_wallet.signer()
            w.images = pass_images(logo_png)
            secret = os.environ.get(WALLET_SECRET_ENV)
            if secret and settings.api_public_url:
                w.secret = secret.encode()
                w.service = {"web_service_url": settings.api_public_url.rstrip("/") + "/apple/"}
            if settings.wallet.apns_push:
                cfg = ateneo.apple_wallet
                password = os.environ.get(cfg.key_password_env) if cfg.key_password_env else None
                w.apns = ApnsClient(
                    settings.wallet.apns_url, cfg.certificate, cfg.key, password, settings.wallet.apns_ca_file
                )
        return w

    def close(self) -> None:
        for client in (self.google, self.apns):
            if client is not None:
                client.close()

    def apple_body(self, card: PassCard) -> dict[str, Any] | None:
        if self.signer is None:
            return None
        if self.secret is None:
            return pass_json(card, self.signer)
        token = pass_auth_token(self.secret, self.signer.pass_type_identifier, card.escn)
        return pass_json(card, self.signer, authentication_token=token, **self.service)


def follow_partition(
    engine: Engine, home: Path, partition: Partition, ateneo: Ateneo, wallets: Wallets,
    qr_base_url: str, today: dt.date,
) -> WalletRunResult:  # fmt: skip
    """Bring the partition's passes in step with its cards (see the module's docstring)."""
    result = WalletRunResult()
    inst, year = partition.institution, partition.academic_year
    with engine.connect() as conn:
        rows = store.pass_rows(conn, inst, year)
        states = store.pass_states(conn, inst, year)
    result.cards = len(rows)
    google_ok = True
    if wallets.google is not None and wallets.google_issuer is not None and rows:
        try:  # a "Save to Google Wallet" link works only once its class exists
            wallets.google.ensure_class(wallets.google_issuer.generic_class(inst))
        except GoogleWalletError as e:
            result.fail(e)
            google_ok = False  # Google's part waits for the next run
    changed: list[dict[str, Any]] = []
    for row in rows:
        card = pass_card(row, ateneo.name, qr_base_url, today)
        old = states.get(row.escn)
        new = {c: getattr(old, c, None) for c in _KEPT} | {"escn": row.escn}
        _follow_apple(home, wallets, card, inst, new, result)
        if google_ok:
            _follow_google(wallets, card, inst, new, result)
        if old is None or any(getattr(old, k) != new[k] for k in _KEPT):
            changed.append(new)
        if len(changed) >= CHUNK:
            _save(engine, changed)
    _save(engine, changed)
    if result.apple_built:
        fsync_directory(pass_path(home, inst, "-").parent)
    _push(engine, wallets, partition, result)
    # Passes of the partition's erased cards whose withdrawal the erasure could not finish.
    gone = sorted(e for e, state in states.items() if state.deleted_at is not None)
    if google_ok:
        withdraw(engine, home, wallets, inst, gone, result)
    return result


def _follow_apple(
    home: Path, wallets: Wallets, card: PassCard, inst: str, new: dict[str, Any], result: WalletRunResult
) -> None:
    body = wallets.apple_body(card)
    if body is None or wallets.signer is None:
        return
    d = digest(body)
    path = pass_path(home, inst, card.escn)
    if new["apple_digest"] == d and path.exists():
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # 0600 (mkstemp); the folder is fsynced once, after the partition's files (follow_partition)
        write_atomically(path, build_pkpass(body, wallets.images, wallets.signer), sync_directory=False)
    except OSError as e:
        result.failed[f"pass file: {e.strerror}"] += 1
        return
    result.apple_built += 1
    if new["apple_digest"] != d:
        new["apple_digest"], new["apple_updated_at"] = d, utcnow()


def _follow_google(
    wallets: Wallets, card: PassCard, inst: str, new: dict[str, Any], result: WalletRunResult
) -> None:
    if wallets.google is None or wallets.google_issuer is None:
        return
    body = wallets.google_issuer.generic_object(card, inst)
    d = digest(body)
    if new["google_digest"] == d:
        return
    try:
        outcome = wallets.google.patch_object(str(body["id"]), body)
    except GoogleWalletError as e:
        result.fail(e)
        return
    new["google_digest"] = d
    if outcome == "updated":
        result.google_updated += 1
    else:
        result.google_not_saved += 1


def _save(engine: Engine, changed: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        store.save_states(conn, changed)
    changed.clear()


def _push(engine: Engine, wallets: Wallets, partition: Partition, result: WalletRunResult) -> None:
    """Devices holding a pass that changed since they were last pushed get a push; a pass counts as
    pushed once every device holding it got one (or is gone), so a failed push is tried again."""
    if wallets.apns is None or wallets.signer is None:
        return
    topic = wallets.signer.pass_type_identifier
    with engine.connect() as conn:
        due = store.unpushed(conn, partition.institution, partition.academic_year)
        devices = store.push_tokens(conn, topic, due)
    unpushed: set[str] = set()
    gone = []
    for d in devices:
        outcome = wallets.apns.push(topic, d.push_token)
        if outcome is Pushed.SENT:
            result.pushed += 1
        elif outcome is Pushed.GONE:
            gone.append((d.device_id, d.serial_number))
        else:
            unpushed.add(d.serial_number)
            result.failed[wallets.apns.failure or "APNs"] += 1
    with engine.begin() as conn:
        for device, serial in gone:
            store.unregister(conn, device, topic, serial)
        store.mark_pushed(conn, [e for e in due if e not in unpushed])
    result.devices_gone += len(gone)


def withdraw(
    engine: Engine, home: Path, wallets: Wallets, inst: str, escns: Sequence[str], result: WalletRunResult
) -> None:
    """Passes of erased cards: file removed, Google object scrubbed (a 404: nobody saved it), row
    dropped. A scrub Google refuses keeps the row: the partition's next run tries again."""
    dropped = []
    for escn in escns:
        pass_path(home, inst, escn).unlink(missing_ok=True)
        if wallets.google is not None and wallets.google_issuer is not None:
            try:
                wallets.google.patch_object(wallets.google_issuer.object_id(escn), SCRUBBED)
            except GoogleWalletError as e:
                result.fail(e)
                continue
        dropped.append(escn)
    with engine.begin() as conn:
        store.drop_states(conn, dropped)
    result.scrubbed += len(dropped)
