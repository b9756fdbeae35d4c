"""Printable badges (fpdf2): one ID-1 card page for card printers, or A4 sheets of 10 with crop marks.

Values that fit Latin-1 (every Italian name) print in the PDF core fonts, with typographic quotes and
dashes made ASCII; any other value prints in embedded Noto fonts (``etl.render.fonts``: Greek,
Cyrillic, Arabic, Devanagari, CJK, shaped right-to-left where the script asks), bold simulated by
stroking the outline since the packaged fonts are variable ones. A character no font has prints as
"?", so an unusual name never stops a batch. The QR is placed at 0.5 mm per module: the 33-module
symbol is 16.5 mm wide (the brief asks >= 15 mm) plus its 2 mm quiet zone on each side; the logo
sits above it (vertical pairing), separated by that quiet zone.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fpdf import FPDF
from fpdf.drawing import DeviceRGB
from fpdf.enums import TextMode
from PIL import Image

from etl.render import fonts
from etl.render.badge_view import BadgeView
from etl.render.logo import (
    PLACEHOLDER,
    PLACEHOLDER_FILL,
    PLACEHOLDER_TEXT,
    Logo,
    Orientation,
    layout,
    logo_from_bytes,
    placeholder_corner_radius,
)
from etl.render.qr import TOTAL_MODULES

CARD_W, CARD_H = 85.60, 53.98  # ISO/IEC 7810 ID-1, mm
QR_MODULE_MM = 0.5
QR_MM = TOTAL_MODULES * QR_MODULE_MM  # 20.5 mm including the quiet zone
A4_W, A4_H = 210.0, 297.0
COLS, ROWS = 2, 5
COL_GAP, ROW_GAP = 6.0, 3.0  # gutters hold the crop marks; margins stay printable (>= 6 mm)
MARK_OFFSET = 0.5  # marks stop short of the card so a slightly off cut leaves no line on it
MARK_WIDTH = 0.1

_HEAD_H = 8.5
_PAD = 4.0
_BLUE, _GREY = (0, 51, 153), (107, 112, 121)
_INK, _MUTED = (27, 31, 36), (91, 100, 112)
_GREEN, _RED = (15, 107, 47), (192, 24, 24)
_PUNCT = str.maketrans(  # typographic punctuation a Latin-1 core font lacks
    {
        "‘": "'",
        "’": "'",
        "‚": ",",
        "‛": "'",
        "ʼ": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "‐": "-",
        "‑": "-",
        "–": "-",
        "—": "-",
        "…": "...",
        "€": "EUR",
    }
)
_BOLD_STROKE = 0.05  # the stroke that makes a regular outline look bold, as a share of the size


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class CardLayout:
    """Positions in mm from the card's top-left corner."""

    qr: Rect  # the 41-module image, quiet zone included
    logo: Rect


def card_layout(logo_aspect: float = PLACEHOLDER.aspect) -> CardLayout:
    comp = layout(Orientation.VERTICAL, logo_aspect)
    m = QR_MODULE_MM
    left = CARD_W - _PAD / 2 - QR_MM  # the quiet zone adds 2 mm of white to the 2 mm card margin
    bottom = CARD_H - 3.0
    qr = Rect(left, bottom - QR_MM, QR_MM, QR_MM)
    # Logo above the QR image, touching it: the QR's own quiet zone is the gap between them.
    logo = Rect(left + comp.logo.x * m, qr.y - comp.logo.h * m, comp.logo.w * m, comp.logo.h * m)
    room = qr.y - (_HEAD_H + 1.0)
    if logo.h > room:  # a tall logo would reach the header: shrink it, centred over the symbol
        w = logo.w * room / logo.h
        logo = Rect(left + (QR_MM - w) / 2, qr.y - room, w, room)
    return CardLayout(qr, logo)


def sheet_positions() -> list[tuple[float, float]]:
    """Top-left corners (mm) of the 10 cards of an A4 sheet, row by row."""
    x0 = (A4_W - COLS * CARD_W - (COLS - 1) * COL_GAP) / 2
    y0 = (A4_H - ROWS * CARD_H - (ROWS - 1) * ROW_GAP) / 2
    return [
        (x0 + c * (CARD_W + COL_GAP), y0 + r * (CARD_H + ROW_GAP)) for r in range(ROWS) for c in range(COLS)
    ]


def pdf_text(text: str) -> str:
    """``text`` NFC-normalised with ASCII punctuation and control characters as spaces."""
    text = unicodedata.normalize("NFC", text).translate(_PUNCT)
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)


def is_latin1(text: str) -> bool:
    return all(ord(ch) < 256 for ch in text)


def render_badge_pdf(view: BadgeView, qr_png: bytes, logo_png: bytes | None = None) -> bytes:
    """One page exactly 85.60 x 53.98 mm: the card for a card printer or a PDF download."""
    logo = _logo(logo_png)
    pdf = _new_pdf((CARD_W, CARD_H), f"European Student Card {view.full_name}")
    pdf.add_page()
    _draw_card(pdf, 0.0, 0.0, view, qr_png, logo)
    return bytes(pdf.output())


def render_badge_sheet_pdf(
    views_with_qr: Iterable[tuple[BadgeView, bytes]], logo_png: bytes | None = None
) -> bytes:
    """A4 pages of 2 x 5 cards with crop marks at each card's corners, as many pages as needed."""
    logo = _logo(logo_png)
    pdf = _new_pdf((A4_W, A4_H), "European Student Cards")
    positions = sheet_positions()
    count = 0
    for view, qr_png in views_with_qr:
        if count % len(positions) == 0:
            pdf.add_page()
        x, y = positions[count % len(positions)]
        _draw_card(pdf, x, y, view, qr_png, logo)
        _crop_marks(pdf, x, y)
        count += 1
    if count == 0:
        raise ValueError("no badges to print")
    return bytes(pdf.output())


def _logo(logo_png: bytes | None) -> Logo:
    if logo_png is None:
        return PLACEHOLDER
    logo = logo_from_bytes(logo_png)
    if logo.kind != "png":
        raise ValueError("the PDF needs a PNG logo")
    return logo


def _new_pdf(page: tuple[float, float], title: str) -> FPDF:
    pdf = FPDF(unit="mm", format=page)
    pdf.set_margins(0, 0, 0)
    pdf.c_margin = 0  # cell() text starts where _fit_text says, as text() does
    pdf.set_auto_page_break(False)
    pdf.set_title(pdf_text(title))
    pdf.set_creator("esc-sync")
    return pdf


def _check_qr_png(qr_png: bytes) -> None:
    try:
        with Image.open(io.BytesIO(qr_png)) as im:  # reads the header only
            fmt, size = im.format, im.size
    except Exception as exc:
        raise ValueError(f"QR image is not readable ({exc})") from exc
    if fmt != "PNG" or size[0] != size[1] or size[0] % TOTAL_MODULES:
        raise ValueError(f"QR image must be a square PNG from render_qr, not {fmt} {size}")


def _draw_card(pdf: FPDF, x0: float, y0: float, view: BadgeView, qr_png: bytes, logo: Logo) -> None:
    _check_qr_png(qr_png)
    lay = card_layout(logo.aspect)
    active = view.is_active
    # White card ground (sheets may be printed on tinted stock), then the header band.
    pdf.set_fill_color(255, 255, 255)
    pdf.rect(x0, y0, CARD_W, CARD_H, style="F")
    pdf.set_fill_color(*(_BLUE if active else _GREY))
    pdf.rect(x0, y0, CARD_W, _HEAD_H, style="F")
    pdf.set_text_color(255, 255, 255)
    pdf.set_font("helvetica", "", 4.6)
    tag = "European Student Card"
    tag_w = pdf.get_string_width(tag)
    pdf.text(x0 + CARD_W - _PAD / 2 - tag_w, y0 + 5.4, tag)
    _fit_text(
        pdf,
        x0 + _PAD,
        y0 + 5.6,
        CARD_W - 2 * _PAD - tag_w - 1,
        view.university_name,
        "helvetica",
        "B",
        7.5,
        5.0,
    )

    # Left column: label above value.
    col_w = lay.qr.x - _PAD - 1.0
    y = y0 + _HEAD_H + 3.2
    rows = (
        ("Nome · Name", view.full_name, "helvetica", "B", 8.0, 3.5),
        ("Matricola · Student no.", view.matricola, "helvetica", "B", 6.5, 2.9),
        ("Corso · Programme", view.course_name, "helvetica", "B", 6.0, 2.8),
        ("A.A. · Academic year", view.academic_year_label, "helvetica", "B", 6.0, 2.8),
        ("ESI", view.esi, "courier", "", 4.6, 2.4),
        ("ESCN", view.escn, "courier", "", 5.2, 2.5),
    )
    for label, value, family, style, size, advance in rows:
        pdf.set_text_color(*_MUTED)
        pdf.set_font("helvetica", "", 4.2)
        pdf.text(x0 + _PAD, y, label)
        pdf.set_text_color(*_INK)
        _fit_text(pdf, x0 + _PAD, y + advance - 0.3, col_w, value, family, style, size, 3.2)
        y += advance + 1.8
    pdf.set_text_color(*_MUTED)
    pdf.set_font("helvetica", "", 4.6)
    pdf.text(x0 + _PAD, y + 0.6, f"Validità · Validity {_d(view.issued_at)} - {_d(view.expires_at)}")

    # Status pill at the bottom left.
    status = "VALIDA · VALID" if active else f"NON VALIDA · NOT VALID ({view.status})"
    pdf.set_font("helvetica", "B", 5.0)
    w = pdf.get_string_width(status) + 3.0
    pdf.set_fill_color(*((227, 244, 232) if active else (253, 228, 228)))
    pdf.rect(x0 + _PAD, y0 + CARD_H - 6.6, w, 3.4, style="F", round_corners=True, corner_radius=1.2)
    pdf.set_text_color(*(_GREEN if active else _RED))
    pdf.text(x0 + _PAD + 1.5, y0 + CARD_H - 4.2, status)

    pdf.image(io.BytesIO(qr_png), x0 + lay.qr.x, y0 + lay.qr.y, lay.qr.w, lay.qr.h)
    lg = lay.logo
    if logo.kind == "png":
        pdf.image(io.BytesIO(logo.data), x0 + lg.x, y0 + lg.y, lg.w, lg.h)
    else:
        pdf.set_fill_color(*_rgb(PLACEHOLDER_FILL))
        pdf.rect(
            x0 + lg.x,
            y0 + lg.y,
            lg.w,
            lg.h,
            style="F",
            round_corners=True,
            corner_radius=placeholder_corner_radius(lg.w, lg.h),
        )
        pdf.set_text_color(*_rgb(PLACEHOLDER_TEXT))
        pdf.set_font("helvetica", "", min(lg.w / 3.2, lg.h / 2.2) / 0.3528)  # mm -> pt
        tw = pdf.get_string_width("logo")
        pdf.text(x0 + lg.x + (lg.w - tw) / 2, y0 + lg.y + lg.h / 2 + pdf.font_size * 0.35, "logo")

    if not active:  # a stamp across the data: nobody mistakes a printout of a dead card for a valid one
        pdf.set_text_color(*_RED)
        pdf.set_font("helvetica", "B", 11)
        text = view.status
        cx, cy = x0 + lay.qr.x / 2, y0 + 30
        with pdf.rotation(14, cx, cy):
            pdf.text(cx - pdf.get_string_width(text) / 2, cy + 1.5, text)
    pdf.set_text_color(0, 0, 0)


def _crop_marks(pdf: FPDF, x: float, y: float) -> None:
    # Horizontal marks run into the column gutter/side margin, vertical ones into the row gutter/top
    # or bottom margin; a gutter holds the marks of both neighbours, so each takes under half of it.
    h_len = min(3.0, COL_GAP / 2 - MARK_OFFSET)
    v_len = min(3.0, ROW_GAP / 2 - MARK_OFFSET)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_line_width(MARK_WIDTH)
    for cx, sx in ((x, -1), (x + CARD_W, 1)):
        for cy, sy in ((y, -1), (y + CARD_H, 1)):
            pdf.line(cx + sx * MARK_OFFSET, cy, cx + sx * (MARK_OFFSET + h_len), cy)
            pdf.line(cx, cy + sy * MARK_OFFSET, cx, cy + sy * (MARK_OFFSET + v_len))


def _fit_text(
    pdf: FPDF,
    x: float,
    baseline: float,
    width: float,
    text: str,
    family: str,
    style: str,
    size: float,
    min_size: float,
) -> None:
    """Shrink down to ``min_size`` to fit ``width``; past that, cut and end with "..."."""
    text = pdf_text(text)
    embedded = not is_latin1(text)
    if embedded:
        text, set_font = _unicode_font(pdf, text)
    else:
        set_font = functools.partial(pdf.set_font, family, style)
    set_font(size)
    while size > min_size and pdf.get_string_width(text) > width:
        size = max(min_size, size - 0.25)
        set_font(size)
    if pdf.get_string_width(text) > width:
        while text and pdf.get_string_width(text + "...") > width:
            text = text[:-1]
        text = text.rstrip() + "..."
    if not embedded:
        pdf.text(x, baseline, text)
        return
    # Embedded fonts go through cell(), the one fpdf2 call that shapes text and uses fallback fonts;
    # cell() puts the baseline at y + h/2 + 0.3 * size, so a cell h = size tall starts 0.8 size above.
    pdf.set_xy(x, baseline - 0.8 * pdf.font_size)
    if "B" in style:
        pdf.text_mode = TextMode.FILL_STROKE
        pdf.set_line_width(pdf.font_size * _BOLD_STROKE)
        if isinstance(color := pdf.text_color, DeviceRGB):  # the outline in the text's own colour
            pdf.set_draw_color(*color.colors255)
    pdf.cell(width, pdf.font_size, text)
    pdf.text_mode = TextMode.FILL


def _unicode_font(pdf: FPDF, text: str) -> tuple[str, Callable[[float], None]]:
    """Registers the faces ``text`` needs (once per document) and picks them for it."""
    text = fonts.printable(text, fonts.chain(text))
    faces = fonts.faces_for(text)
    for face in faces:
        if face.family not in pdf.fonts:
            pdf.add_font(face.family, "", face.path, collection_font_number=face.index)
    pdf.set_text_shaping(True)  # core fonts ignore it; Arabic, Hebrew, Indic and Thai need it
    pdf.set_fallback_fonts([face.family for face in faces[1:]])
    return text, functools.partial(pdf.set_font, faces[0].family, "")


def _rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _d(day: dt.date) -> str:
    return day.strftime("%d/%m/%Y")
