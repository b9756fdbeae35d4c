"""Benchmark Apple Wallet pass building (issue 24): signed ``.pkpass`` files per second on one core,
against rendering the same cards' QR PNG and SVG in the same run (the baseline every card already
pays), and the time a 20,000-card university's passes take at that rate (goal: under 2 minutes).

A test certificate chain is made here (RSA 2048, as Apple's Pass Type ID certificates are); each pass
is built whole: pass.json, icon and logo images, manifest, detached PKCS#7 signature, ZIP.

Then the ``wallet_passes`` asset on a SQLite state DB: a first run storing every pass and a second with
nothing changed, per card against building the pass alone.

    .venv/bin/python bench/bench_wallet.py [--cards 10000] [--university-cards 20000] [--follow-cards 5000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
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
    ap.add_argument("--follow-cards", type=int, default=5_000, help="cards of the asset's measure")
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
    follow(args.follow_cards, pass_cpu / n)


def follow(n: int, pass_cpu_per_card: float) -> None:
    """The ``wallet_passes`` asset's own work on a SQLite state DB of ``n`` registered cards: the first
    run (every pass built, stored 0600, its state saved) and a second with nothing changed (digests
    only), each against building the passes (above) and writing as many files (here) alone."""
    from dataclasses import replace

    from etl.files import write_atomically
    from etl.partitions import Partition
    from etl.store.db import make_engine
    from etl.store.migrate import upgrade
    from etl.wallet.apple import AppleWalletConfig
    from etl.wallet.follow import Wallets, follow_partition
    from tests.api_seed import seed_cards
    from tests.fixtures.wallet import make_chain
    from tests.fixtures.world import demo_settings

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        chain = make_chain(home, password=None)
        settings = demo_settings(home, f"sqlite:///{home / 'state.sqlite'}")
        apple = AppleWalletConfig("pass.bench", "TEAM", chain["pass"], chain["key"], chain["wwdr"])
        settings = replace(settings, atenei=tuple(replace(a, apple_wallet=apple) for a in settings.atenei))
        engine = make_engine(settings.database_url)
        upgrade(engine)
        seed_cards(engine, settings, "unipa", n)
        ateneo = settings.ateneo("unipa")
        wallets = Wallets.of(settings, ateneo, None)
        runs = []
        for _ in range(2):
            t0, c0 = time.perf_counter(), time.process_time()
            r = follow_partition(engine, home, Partition(2025, "unipa"), ateneo, wallets,
                                 settings.qr_base_url, dt.date(2026, 1, 15))  # fmt: skip
            runs.append((time.perf_counter() - t0, time.process_time() - c0, r.apple_built))
        engine.dispose()
        # The file system's share: the same number of 3.2 KB files written the same way, alone.
        folder = home / "bare"
        folder.mkdir()
        c0 = time.process_time()
        for i in range(n):
            write_atomically(folder / f"{i}.pkpass", bytes(3_300), sync_directory=False)
        files_cpu = (time.process_time() - c0) / n
    print(f"writing {n:,} pass-sized files alone (this disk): CPU {files_cpu * 1000:.3f} ms/file")
    for label, (wall, cpu, built) in zip(("first run", "nothing changed"), runs, strict=True):
        print(
            f"wallet_passes asset, {label:15s} {n:,} cards in {wall:.2f} s, CPU {cpu / n * 1000:.3f} ms/card "
            f"(x{cpu / n / (pass_cpu_per_card + files_cpu):.2f} of building and writing the pass alone), "
            f"{built:,} built"
        )


if __name__ == "__main__":
    main()
