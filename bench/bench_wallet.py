"""Benchmark Apple Wallet pass building (issue 24): signed ``.pkpass`` files per second on one core,
against rendering the same cards' QR PNG and SVG in the same run (the baseline every card already
pays), and the time a 20,000-card university's passes take at that rate (goal: under 2 minutes).

A test certificate chain is made here (RSA 2048, as Apple's Pass Type ID certificates are); each pass
is built whole: pass.json, icon and logo images, manifest, detached PKCS#7 signature, ZIP.

    .venv/bin/python bench/bench_wallet.py [--cards 10000] [--university-cards 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etl.domain.escn import mint_escn
from etl.render.qr import render_qr
from etl.wallet.apple import PassCard, PassSigner, build_pkpass, pass_images, pass_json

PIC = "999912345"


def signer() -> PassSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)

    def cert(cn: str) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
        )  # fmt: skip

    pem = serialization.Encoding.PEM
    return PassSigner.from_pem(
        "pass.bench", "TEAM",
        cert("pass").public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        cert("wwdr").public_bytes(pem),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cards", type=int, default=10_000)
    ap.add_argument("--university-cards", type=int, default=20_000)
    args = ap.parse_args()
    escns = [mint_escn(PIC, unix_millis=1_760_000_000_000 + i, clock_seq=7) for i in range(args.cards)]
    cards = [
        PassCard(e, f"https://s.esc-r.eu/{e}", f"Student {i:05d}", "Università Demo di Palermo",
                 dt.date(2026, 10, 31), "ACTIVE", 2025)
        for i, e in enumerate(escns)
    ]  # fmt: skip
    s = signer()

    t0, c0 = time.perf_counter(), time.process_time()
    for c in cards:
        render_qr(c.qr_payload)
    qr_s, qr_cpu = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    images = pass_images(None)  # the same per university: made once
    size = 0
    for c in cards:
        size += len(build_pkpass(pass_json(c, s), images, s))
    pass_s, pass_cpu = time.perf_counter() - t0, time.process_time() - c0

    n = len(cards)
    print(f"{n:,} cards, 1 core")
    print(f"QR PNG+SVG (baseline)  {n / qr_s:8.0f} /s   CPU {qr_cpu / n * 1000:.2f} ms/card")
    print(
        f"signed .pkpass         {n / pass_s:8.0f} /s   CPU {pass_cpu / n * 1000:.2f} ms/card   "
        f"x{pass_cpu / qr_cpu:.2f} of the QR's CPU; {size / n / 1024:.1f} KB each"
    )
    whole = args.university_cards * pass_cpu / n
    print(f"{args.university_cards:,}-card university: {whole:.0f} s of one core (goal < 120 s)")


if __name__ == "__main__":
    main()
