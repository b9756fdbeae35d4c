"""Printed badges in any script: what an embedded Unicode font costs against the PDF core fonts.

    python bench/bench_badge_pdf.py [--rounds 5] [--sheet 50]

Renders one ID-1 badge PDF per name (the REST service's badge.pdf) and one A4 sheet of ``--sheet``
badges (the print asset) for Latin-1 names (core Helvetica: the baseline, measured in the same run),
Greek/Cyrillic (Noto Sans), Arabic, Hebrew, Tamil and Thai (their faces, shaped) and CJK (Noto
Sans CJK). Prints the
median time per document and its ratio to the baseline, and the PDF sizes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from etl.domain.escn import mint_escn
from etl.render.badge_pdf import render_badge_pdf, render_badge_sheet_pdf
from etl.render.badge_view import BadgeView
from etl.render.qr import qr_payload, render_qr

SCRIPTS = {
    "latin-1 (core font, baseline)": "Niccolò D'Àgostino",
    "greek + cyrillic (Noto Sans)": "Ζωή Παπαδοπούλου Пушкина",
    "arabic (Noto Sans Arabic)": "محمد عبد الرحمن الأحمد",
    "hebrew (Heebo)": "שָׂרָה כֹּהֵן לֵוִי",
    "tamil (Noto Sans Tamil)": "தமிழ்செல்வி சுப்பிரமணியம்",
    "thai (Noto Sans Thai)": "สมชาย ใจดี",
    "cjk (Noto Sans CJK SC)": "王小明",
}


def view(name: str, escn: str) -> BadgeView:
    return BadgeView(
        university_code="unife",
        university_name="Università degli Studi di Ferrara",
        full_name=name,
        matricola="191275",
        course_name="Ingegneria Informatica e dell'Automazione",
        academic_year=2025,
        esi="urn:schac:personalUniqueCode:int:esi:unife.it:191275",
        escn=escn,
        card_type="PASSIVE",
        issued_at=dt.date(2025, 10, 1),
        expires_at=dt.date(2026, 10, 31),
        status="ACTIVE",
        qr_payload=qr_payload(escn),
    )


def median_seconds(work: Callable[[], bytes], rounds: int) -> tuple[float, int]:
    size, times = 0, []
    for _ in range(rounds):
        start = time.perf_counter()
        size = len(work())
        times.append(time.perf_counter() - start)
    return statistics.median(times), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sheet", type=int, default=50, help="badges on the A4 sheet")
    args = parser.parse_args()
    escn = mint_escn("999978433", unix_millis=1_767_225_600_000, clock_seq=7)
    qr = render_qr(qr_payload(escn)).png
    render_badge_pdf(view("Ζ王م", escn), qr)  # loads the fonts' character maps once, as a server does
    print(f"{'names':<32} {'badge.pdf':>10} {'ratio':>6} {'size':>8}   {'sheet':>8} {'ratio':>6} {'size':>9}")
    base_one = base_sheet = 0.0
    for label, name in SCRIPTS.items():
        one, one_size = median_seconds(lambda n=name: render_badge_pdf(view(n, escn), qr), args.rounds)
        sheet_views = [(view(name, escn), qr)] * args.sheet
        sheet, sheet_size = median_seconds(lambda v=sheet_views: render_badge_sheet_pdf(v), args.rounds)
        base_one, base_sheet = base_one or one, base_sheet or sheet
        print(
            f"{label:<32} {one * 1000:>8.1f}ms {one / base_one:>5.1f}x {one_size / 1024:>6.0f}KB"
            f"   {sheet:>7.2f}s {sheet / base_sheet:>5.1f}x {sheet_size / 1024:>7.0f}KB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
