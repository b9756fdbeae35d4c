"""etl.render: QR symbols, QR + logo composition, badge view, badge HTML and PDFs."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import unicodedata
import zlib
from dataclasses import replace
from html.parser import HTMLParser
from xml.etree import ElementTree as ET

import pypdf
import pytest
import zxingcpp
from PIL import Image

from etl.domain.escn import mint_escn
from etl.render import badge_pdf, fonts
from etl.render.badge_html import render_badge_html
from etl.render.badge_pdf import (
    A4_H,
    A4_W,
    CARD_H,
    CARD_W,
    card_layout,
    render_badge_pdf,
    render_badge_sheet_pdf,
    sheet_positions,
)
from etl.render.badge_view import BadgeView
from etl.render.logo import (
    PLACEHOLDER,
    Orientation,
    compose_png,
    compose_svg,
    layout,
    load_logo,
    logo_from_bytes,
)
from etl.render.qr import TOTAL_MODULES, qr_payload, render_many, render_qr

PIC = "999978433"
ESCN = "c3ddd400-d3ef-103e-9234-001999978433"
PAYLOAD = "https://s.esc-r.eu/" + ESCN
MM_PER_PT = 25.4 / 72


def escns(n: int) -> list[str]:
    return [mint_escn(PIC, unix_millis=1_767_225_600_000 + 7919 * i, clock_seq=i * 37) for i in range(n)]


def decode(png: bytes) -> zxingcpp.Barcode:
    got = zxingcpp.read_barcode(Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode)
    assert got is not None, "no QR found"
    return got


def view(**changes: object) -> BadgeView:
    base = BadgeView(
        university_code="unife",
        university_name="Università degli Studi di Ferrara",
        full_name="Niccolò D'Àgostino",
        matricola="191275",
        course_name="Ingegneria Informatica e dell'Automazione",
        academic_year=2025,
        esi="urn:schac:personalUniqueCode:int:esi:unife.it:191275",
        escn=ESCN,
        card_type="SMART_PASSIVE",
        issued_at=dt.date(2025, 10, 1),
        expires_at=dt.date(2026, 10, 31),
        status="ACTIVE",
        qr_payload=PAYLOAD,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def qr() -> object:
    return render_qr(PAYLOAD)


# --- qr -------------------------------------------------------------------------------------------


def test_qr_payload_joins_base_and_escn() -> None:
    assert qr_payload(ESCN) == PAYLOAD
    assert qr_payload(ESCN, "http://esc.gg/") == "http://esc.gg/" + ESCN  # older cards
    assert qr_payload(ESCN, "https://verify.example.org/esc") == "https://verify.example.org/esc/" + ESCN


V4_UUID = "6f1c2e4a-9b8d-4c3e-8a7f-001999978433"  # right shape, but not a version-1 UUID
BAD_ESCNS = [ESCN.upper(), "not-an-escn", "", V4_UUID, None]


@pytest.mark.parametrize("escn", BAD_ESCNS)
def test_qr_payload_rejects_bad_escn(escn: object) -> None:
    with pytest.raises(ValueError):
        qr_payload(escn)  # type: ignore[arg-type]


@pytest.mark.parametrize("base", ["ftp://s.esc-r.eu/", "s.esc-r.eu/", "https://ésc.eu/", "https://a b/"])
def test_qr_payload_rejects_bad_base(base: str) -> None:
    with pytest.raises(ValueError):
        qr_payload(ESCN, base)


def test_png_decodes_as_version_4_level_m_with_quiet_zone(qr) -> None:
    got = decode(qr.png)
    assert got.text == PAYLOAD
    assert got.extra["Version"] == "4" and got.ec_level == "M"
    assert got.symbology_identifier == "]Q1"  # model 2 QR, no ECI
    im = Image.open(io.BytesIO(qr.png))
    assert im.format == "PNG" and im.mode == "1" and im.size == (41 * 4, 41 * 4)
    px = im.convert("L").load()
    quiet = 4 * 4
    border = [
        (x, y)
        for x in range(im.width)
        for y in range(im.height)
        if min(x, y) < quiet or max(x, y) >= im.width - quiet
    ]
    assert all(px[p] == 255 for p in border)  # 4 light modules all round
    assert px[quiet, quiet] == 0  # the finder pattern starts right after the quiet zone


def _svg_matrix(svg: bytes) -> list[list[int]]:
    """Rasterise our SVG (one path of 1-module-high runs) into a 41x41 matrix of 1 = dark."""
    text = svg.decode()
    assert text.startswith("<svg ") and 'viewBox="0 0 41 41"' in text and "<?xml" not in text
    ET.fromstring(text)  # well-formed
    d = re.search(r' d="([^"]*)"', text).group(1)
    grid = [[0] * TOTAL_MODULES for _ in range(TOTAL_MODULES)]
    runs = re.findall(r"M(\d+) (\d+)h(\d+)v1h-(\d+)z", d)
    assert "".join(f"M{x} {y}h{n}v1h-{m}z" for x, y, n, m in runs) == d
    for x, y, n, _ in runs:
        for i in range(int(n)):
            grid[int(y)][int(x) + i] = 1
    return grid


def test_svg_is_the_same_symbol_as_png(qr) -> None:
    grid = _svg_matrix(qr.svg)
    im = Image.open(io.BytesIO(qr.png)).convert("L")
    png_grid = [[1 if im.getpixel((x * 4 + 1, y * 4 + 1)) == 0 else 0 for x in range(41)] for y in range(41)]
    assert grid == png_grid
    raster = Image.new("L", (41 * 5, 41 * 5), 255)
    for y, row in enumerate(grid):
        for x, dark in enumerate(row):
            if dark:
                raster.paste(0, (x * 5, y * 5, x * 5 + 5, y * 5 + 5))
    assert zxingcpp.read_barcode(raster).text == PAYLOAD


def test_render_is_deterministic_and_scale_is_honoured() -> None:
    assert render_qr(PAYLOAD) == render_qr(PAYLOAD)
    small = render_qr(PAYLOAD, scale=1)
    assert Image.open(io.BytesIO(small.png)).size == (41, 41)
    assert 'width="41"' in small.svg.decode()
    for bad in (0, 65, 2.5):
        with pytest.raises(ValueError):
            render_qr(PAYLOAD, scale=bad)  # type: ignore[arg-type]


def test_mask_is_chosen_per_symbol_not_fixed() -> None:
    masks = {decode(render_qr(qr_payload(e)).png).extra["DataMask"] for e in escns(40)}
    assert len(masks) > 1


def test_longest_byte_payload_fits_and_one_more_does_not() -> None:
    fits = "https://x.eu/" + "a" * 49  # 62 bytes: version 4-M byte-mode capacity
    assert decode(render_qr(fits).png).extra["Version"] == "4"
    with pytest.raises(ValueError, match="does not fit version 4-M"):
        render_qr(fits + "a")
    with pytest.raises(ValueError, match="does not fit"):
        render_qr(qr_payload(ESCN, "https://a-much-longer-verifier-host.example.org/"))


@pytest.mark.parametrize("payload", ["", "https://s.esc-r.eu/è", None, b"https://s.esc-r.eu/x"])
def test_bad_payload_is_refused(payload: object) -> None:
    with pytest.raises(ValueError):
        render_qr(payload)  # type: ignore[arg-type]


def test_render_many_in_a_pool_equals_serial() -> None:
    payloads = [qr_payload(e) for e in escns(24)]
    serial = [render_qr(p) for p in payloads]
    assert render_many(payloads, workers=2) == serial
    assert render_many(payloads) == serial  # small batch: serial path
    assert render_many([]) == []
    assert render_many(payloads[:2], scale=2) == [render_qr(p, scale=2) for p in payloads[:2]]
    assert [decode(img.png).text for img in serial[:3]] == payloads[:3]


def test_render_many_refuses_bad_input_before_starting_workers() -> None:
    with pytest.raises(ValueError):
        render_many([PAYLOAD, "x" * 200], workers=2)
    with pytest.raises(ValueError):
        render_many([PAYLOAD], workers=0)


# --- logo -----------------------------------------------------------------------------------------


def _png_bytes(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def _crop_equals_qr(composed: Image.Image, qr_png: bytes, x: int, y: int) -> bool:
    ref = Image.open(io.BytesIO(qr_png)).convert("RGB")
    return composed.crop((x, y, x + ref.width, y + ref.height)).tobytes() == ref.tobytes()


def test_placeholder_horizontal_puts_logo_right_of_qr(qr) -> None:
    im = Image.open(io.BytesIO(compose_png(qr.png, PLACEHOLDER, Orientation.HORIZONTAL)))
    assert im.size == ((41 + 33 + 4) * 4, 41 * 4)
    assert _crop_equals_qr(im, qr.png, 0, 0)
    assert im.getpixel((41 * 4 + 66, 4 * 4 + 10)) == (0xD0, 0xD0, 0xD0)  # grey placeholder box
    assert im.getpixel((41 * 4 + 66, 4 * 4 - 2)) == (255, 255, 255)  # margin above it
    assert decode(_png_bytes(im)).text == PAYLOAD


def test_placeholder_vertical_puts_logo_above_qr(qr) -> None:
    im = Image.open(io.BytesIO(compose_png(qr.png, PLACEHOLDER, "vertical")))
    assert im.size == (41 * 4, (4 + 33 + 41) * 4)
    assert _crop_equals_qr(im, qr.png, 0, (4 + 33) * 4)
    assert im.getpixel((82, 4 * 4 + 10)) == (0xD0, 0xD0, 0xD0)
    assert decode(_png_bytes(im)).text == PAYLOAD


def test_configured_png_logo_keeps_its_proportions(tmp_path, qr) -> None:
    path = tmp_path / "esc-logo.png"
    Image.new("RGB", (200, 100), (200, 0, 0)).save(path)
    logo = load_logo(path)
    assert logo.kind == "png" and logo.aspect == 2.0
    h = Image.open(io.BytesIO(compose_png(qr.png, logo, "horizontal")))
    assert h.size == ((41 + 66 + 4) * 4, 164)
    assert h.getpixel((41 * 4 + 132, 82)) == (200, 0, 0)
    v = Image.open(io.BytesIO(compose_png(qr.png, logo, "vertical")))
    assert v.size == (164, round((4 + 16.5 + 41) * 4))
    assert v.getpixel((82, 4 * 4 + 20)) == (200, 0, 0)


def test_svg_logo_in_svg_output_and_refused_for_png(tmp_path, qr) -> None:
    path = tmp_path / "esc-logo.svg"
    path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 300 100"><rect width="300" '
        'height="100" fill="#039"/></svg>'
    )
    logo = load_logo(str(path))
    assert logo.kind == "svg" and logo.aspect == 3.0
    root = ET.fromstring(compose_svg(qr.svg, logo, "horizontal"))
    assert root.get("viewBox") == "0 0 144 41"  # 41 + 99 + 4 modules wide
    image = root.find("{http://www.w3.org/2000/svg}image")
    assert image.get("href").startswith("data:image/svg+xml;base64,")
    assert (image.get("x"), image.get("width"), image.get("height")) == ("41", "99", "33")
    with pytest.raises(ValueError, match="PNG logo"):
        compose_png(qr.png, logo)


def test_placeholder_svg_vertical_layout(qr) -> None:
    root = ET.fromstring(compose_svg(qr.svg, PLACEHOLDER, Orientation.VERTICAL))
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("viewBox") == "0 0 41 78"
    inner = root.find(f"{ns}svg")
    assert inner.get("y") == "37"  # QR below the logo
    box = root.find(f"{ns}rect[@rx]")
    assert (box.get("x"), box.get("y"), box.get("width")) == ("4", "4", "33")
    assert root.find(f"{ns}text").text == "logo"


def test_layout_geometry_keeps_quiet_zone_clear() -> None:
    for aspect in (0.5, 1.0, 2.5):
        h = layout("horizontal", aspect)
        assert h.logo.x >= h.qr.x + h.qr.w and h.logo.h == 33
        v = layout("vertical", aspect)
        assert v.logo.y + v.logo.h <= v.qr.y and v.logo.w == 33
    with pytest.raises(ValueError):
        layout("diagonal")
    with pytest.raises(ValueError):
        layout("horizontal", 12.0)


def test_bad_logo_files_are_refused(tmp_path) -> None:
    assert load_logo(None) is PLACEHOLDER
    with pytest.raises(ValueError, match="cannot be read"):
        load_logo(tmp_path / "missing.png")
    cases = {
        "junk.png": b"\x89PNG\r\n\x1a\nnot really",
        "junk.svg": b"<svg",
        "html.svg": b"<html></html>",
        "nosize.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>',
        "thin.svg": b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1000 10"/>',
        "entity.svg": b'<!DOCTYPE svg [<!ENTITY a "aaaa">]><svg viewBox="0 0 1 1">&a;</svg>',
        "empty.png": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError):
            load_logo(tmp_path / name)
    with pytest.raises(ValueError):
        compose_svg(b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', PLACEHOLDER)


# --- badge view -----------------------------------------------------------------------------------


def test_badge_view_json() -> None:
    data = view().to_json_dict()
    assert data["issued_at"] == "2025-10-01" and data["expires_at"] == "2026-10-31"
    assert data["academic_year"] == 2025 and data["academic_year_label"] == "2025/2026"
    assert data["full_name"] == "Niccolò D'Àgostino" and data["qr_payload"] == PAYLOAD
    assert json.loads(json.dumps(data)) == data
    assert view().is_active and not view(status="INACTIVE").is_active


@pytest.mark.parametrize(
    "changes",
    [
        {"full_name": " "},
        {"escn": None},
        {"academic_year": "2025"},
        {"academic_year": True},
        {"academic_year": 25},
        {"issued_at": dt.datetime(2025, 10, 1, 12, 0)},
        {"expires_at": "2026-10-31"},
        {"expires_at": dt.date(2025, 9, 30)},
        {"status": "active"},
    ],
)
def test_badge_view_refuses_bad_values(changes: dict) -> None:
    with pytest.raises(ValueError):
        view(**changes)


# --- HTML -----------------------------------------------------------------------------------------


class _Balance(HTMLParser):
    VOID = frozenset({"meta", "br", "img", "rect", "path", "image", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> in {self.stack}"
        self.stack.pop()


def test_html_escapes_every_text_field(qr) -> None:
    evil = view(
        full_name="<script>alert(1)</script>",
        university_name='Uni " onload="x()',
        course_name="A & B <i>",
        matricola="<b>1</b>",
        status="<INACTIVE>",
    )
    page = render_badge_html(evil, qr.svg)
    assert "<script" not in page.lower() and "<i>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Uni &quot; onload=&quot;x()" in page and "A &amp; B &lt;i&gt;" in page
    assert 'data-status="&lt;INACTIVE&gt;"' in page
    parser = _Balance()
    parser.feed(page)
    assert parser.stack == []
    assert "script" not in parser.tags


def test_html_shows_required_fields_self_contained(qr) -> None:
    page = render_badge_html(view(), qr.svg)
    for text in (
        "Niccolò D&#x27;Àgostino",
        "191275",
        "Ingegneria Informatica e dell&#x27;Automazione",
        "2025/2026",
        "urn:schac:personalUniqueCode:int:esi:unife.it:191275",
        ESCN,
        "01/10/2025",
        "31/10/2026",
        "VALID",
        "Università degli Studi di Ferrara",
    ):
        assert text in page, text
    assert "aspect-ratio:85.60/53.98" in page
    assert page.count("<svg") == 2 and "M4 4h7v1h-7z" in page  # the QR inline (finder pattern run)
    assert ">logo</text>" in page  # placeholder in the logo slot
    assert not re.search(r"<(script|link|iframe|img)\b|\bsrc=|url\(|@import", page)
    for url in re.findall(r"https?://[^\s\"'<)]+", page):
        assert url in ("http://www.w3.org/2000/svg", PAYLOAD), url
    assert "default-src 'none'" in page
    assert 'class="badge active"' in page and 'class="stamp"' not in page


def test_html_inactive_badge_looks_different_and_logo_is_embedded(qr) -> None:
    logo = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 2 1"><rect width="2" height="1"/></svg>'
    page = render_badge_html(view(status="EXPIRED"), qr.svg, logo)
    assert 'class="badge inactive"' in page and "NOT VALID" in page
    assert '<div class="stamp">EXPIRED</div>' in page
    assert "data:image/svg+xml;base64," in page and ">logo</text>" not in page


# --- PDF ------------------------------------------------------------------------------------------


def _pages(pdf: bytes) -> list[tuple[str, bytes]]:
    """(MediaBox, decompressed content stream) for each page, in order (fpdf2's plain object layout)."""
    objs = {int(n): body for n, body in re.findall(rb"(\d+) 0 obj\s*(.*?)endobj", pdf, re.S)}
    pages_obj = next(body for body in objs.values() if b"/Type /Pages" in body)
    default_box = re.search(rb"/MediaBox \[([^\]]*)\]", pages_obj)
    kids = re.findall(rb"(\d+) 0 R", re.search(rb"/Kids \[([^\]]*)\]", pages_obj).group(1))
    out = []
    for k in kids:
        page = objs[int(k)]
        box = re.search(rb"/MediaBox \[([^\]]*)\]", page) or default_box
        content = objs[int(re.search(rb"/Contents (\d+) 0 R", page).group(1))]
        stream = re.search(rb"stream\r?\n(.*)\r?\nendstream", content, re.S).group(1)
        out.append((box.group(1).decode(), zlib.decompress(stream)))
    return out


def _images_mm(content: bytes) -> list[tuple[float, float, float, float]]:
    """(x, y from the bottom, width, height) in mm of each image drawn."""
    found = re.findall(rb"q ([\d.]+) 0 0 ([\d.]+) ([\d.]+) ([\d.]+) cm /I\d+ Do Q", content)
    return [
        (float(x) * MM_PER_PT, float(y) * MM_PER_PT, float(w) * MM_PER_PT, float(h) * MM_PER_PT)
        for w, h, x, y in found
    ]


def test_card_pdf_is_one_id1_page_with_a_big_enough_qr(qr) -> None:
    pdf = render_badge_pdf(view(), qr.png)
    assert pdf.startswith(b"%PDF-")
    [(box, content)] = _pages(pdf)
    assert box == "0 0 242.65 153.01"  # 85.60 x 53.98 mm in points
    [(x, y, w, h)] = _images_mm(content)  # placeholder logo is vector: the one image is the QR
    assert w == pytest.approx(h) and w * 33 / 41 >= 15.0  # the symbol itself is >= 15 mm wide
    assert x >= 0 and x + w <= CARD_W and y >= 0 and y + h <= CARD_H
    assert b"(Niccol\xf2 D'\xc0gostino) Tj" in content  # accents survive in WinAnsi/Latin-1
    assert b"(logo) Tj" in content


def test_card_pdf_with_png_logo_places_it_above_the_qr(qr) -> None:
    logo = _png_bytes(Image.new("RGB", (120, 60), (0, 51, 153)))
    [(_, content)] = _pages(render_badge_pdf(view(), qr.png, logo))
    images = sorted(_images_mm(content), key=lambda r: r[1])  # PDF y grows upwards
    assert len(images) == 2
    qr_img, logo_img = images
    assert logo_img[1] >= qr_img[1] + qr_img[3]  # above
    assert logo_img[2] == pytest.approx(2 * logo_img[3], rel=0.01)
    with pytest.raises(ValueError):
        render_badge_pdf(view(), qr.png, b"<svg/>")
    for bad_qr in (b"", b"not a png", logo):  # the 120x60 logo is not a QR image
        with pytest.raises(ValueError):
            render_badge_pdf(view(), bad_qr)


def _pdf_text_and_fonts(pdf: bytes) -> tuple[str, set[str]]:
    page = pypdf.PdfReader(io.BytesIO(pdf)).pages[0]
    fonts = {str(f["/BaseFont"]).split("+")[-1] for f in page["/Resources"]["/Font"].values()}
    # pypdf pads CID text with NULs and reads shaped ligatures as control characters: drop them.
    text = "".join(c for c in page.extract_text() if c == "\n" or unicodedata.category(c) != "Cc")
    return text, fonts


@pytest.mark.parametrize(
    ("name", "font"),
    [
        ("Ζωή Παπαδοπούλου", "NotoSans"),
        ("Александр Пушкин", "NotoSans"),
        ("Łukasz Żółć Nguyễn", "NotoSans"),
        ("अनीता शर्मा", "NotoSans"),
        ("王小明", "NotoSansCJKSC"),
        ("山田 はなこ", "NotoSansCJKJP"),
        ("김민준", "NotoSansCJKKR"),
    ],
)
def test_pdf_prints_non_latin_names_in_an_embedded_unicode_font(qr, name: str, font: str) -> None:
    text, fonts = _pdf_text_and_fonts(render_badge_pdf(view(full_name=name), qr.png))
    assert name in text.splitlines()
    assert font in fonts, fonts
    assert {f for f in fonts if f.startswith("Noto")} <= {"NotoSans", font}  # only the faces it needs


def test_pdf_shapes_arabic_names_right_to_left(qr) -> None:
    name = "محمد الأحمد"
    pdf = render_badge_pdf(view(full_name=name, course_name="Ingegneria — Ζ"), qr.png)
    text, fonts = _pdf_text_and_fonts(pdf)
    assert any(f.startswith("NotoSansArabic") for f in fonts)
    assert set(name) - {" "} <= set(text)
    [(_, content)] = _pages(pdf)
    assert b"(\x0627)" not in content  # not drawn as loose characters by the core font


@pytest.mark.parametrize(
    ("name", "font"),
    [("தமிழ்செல்வி சுப்பிரமணியம்", "NotoSansTamil"), ("สมชาย ใจดี", "NotoSansThai"), ("שָׂרָה כֹּהֵן", "Heebo")],
)
def test_pdf_shapes_tamil_thai_and_hebrew_names_in_their_own_font(qr, name: str, font: str) -> None:
    # HarfBuzz shapes them (vowel signs reordered and stacked), so compare characters, not the string
    text, fonts = _pdf_text_and_fonts(render_badge_pdf(view(full_name=name), qr.png))
    assert {f for f in fonts if f.startswith("Noto")} <= {"NotoSans", font} and font in fonts, fonts
    assert set(name) - {" "} <= set(text) and "?" not in text


def test_pdf_sets_hebrew_right_to_left(qr) -> None:
    text, _ = _pdf_text_and_fonts(render_badge_pdf(view(full_name="שרה כהן"), qr.png))
    assert "כהן שרה" in text.splitlines()  # read back left to right: the first name is on the right


def test_pdf_keeps_latin1_names_in_core_fonts_and_marks_glyphs_no_font_has(qr) -> None:
    text, fonts = _pdf_text_and_fonts(render_badge_pdf(view(full_name="Niccolò D’Àgostino"), qr.png))
    assert "Niccolò D'Àgostino" in text and not any("Noto" in f for f in fonts)  # nothing to embed
    text, _ = _pdf_text_and_fonts(render_badge_pdf(view(full_name="Ana ქართ \U0001f600\x07Żak"), qr.png))
    assert "Ana ???? ? Żak" in text.splitlines()  # Georgian and emoji: no font has them


def test_long_values_shrink_or_cut_instead_of_overflowing(qr) -> None:
    long_course = "Corso di laurea magistrale a ciclo unico in " + "Scienze " * 30
    [(_, content)] = _pages(render_badge_pdf(view(course_name=long_course), qr.png))
    drawn = re.search(rb"/F2 ([\d.]+) Tf ET\n[^\n]*\((Corso di laurea[^)]*)\) Tj", content)
    assert float(drawn.group(1)) >= 3.2 and drawn.group(2).endswith(b"...")
    assert len(drawn.group(2)) < len(long_course)


def test_sheet_lays_out_23_cards_on_3_a4_pages_with_crop_marks() -> None:
    numbers = escns(23)
    images = render_many([qr_payload(e) for e in numbers], workers=1)
    views = [
        view(escn=e, qr_payload=img.payload, matricola=str(100 + i))
        for i, (e, img) in enumerate(zip(numbers, images, strict=True))
    ]
    pages = _pages(render_badge_sheet_pdf((v, img.png) for v, img in zip(views, images, strict=True)))
    assert len(pages) == 3
    assert all(box == "0 0 595.28 841.89" for box, _ in pages)
    per_page = [10, 10, 3]
    for (_, content), cards in zip(pages, per_page, strict=True):
        assert len(_images_mm(content)) == cards
        marks = re.findall(rb"([\d.]+) ([\d.]+) m ([\d.]+) ([\d.]+) l S", content)
        assert len(marks) == 8 * cards  # two short lines at each of the 4 corners


def test_sheet_geometry_fits_a4_and_marks_stay_off_cards() -> None:
    pos = sheet_positions()
    assert len(pos) == 10
    for x, y in pos:
        assert x >= 10 and y >= 6 and x + CARD_W <= A4_W - 10 and y + CARD_H <= A4_H - 6
    rects = [(x, y, x + CARD_W, y + CARD_H) for x, y in pos]
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], "cards overlap"
    assert badge_pdf.MARK_OFFSET > 0 and badge_pdf.ROW_GAP / 2 > badge_pdf.MARK_OFFSET


def test_sheet_refuses_no_cards_and_tall_logo_stays_below_header() -> None:
    with pytest.raises(ValueError):
        render_badge_sheet_pdf([])
    lay = card_layout(0.25)
    assert lay.logo.y >= 9.0 and lay.logo.y + lay.logo.h <= lay.qr.y
    assert logo_from_bytes(_png_bytes(Image.new("RGB", (10, 40)))).aspect == 0.25


def test_font_chain_picks_one_cjk_face_per_name_and_marks_what_no_face_has() -> None:
    assert fonts.cjk_face("김민준") == fonts.CJK_KR
    assert fonts.cjk_face("山田 はなこ") == fonts.CJK_JP  # kana: Japanese, kanji included
    assert fonts.cjk_face("山田") == fonts.cjk_face("Ζωή") == fonts.CJK_SC
    assert fonts.chain("x")[0] == fonts.SANS
    faces = fonts.chain("王")
    assert fonts.printable("王\x07Ζ\u2028x", faces) == "王 Ζ x"
    assert fonts.printable("\U0001f600 ქართ", faces) == "? ????"
    assert fonts.printable("தமிழ் ไทย שָׁלוֹם", faces) == "தமிழ் ไทย שָׁלוֹם"
    persian = "می\u200cخواهم"  # the ZWNJ is part of the spelling: kept
    assert fonts.printable(persian + "\u202e\u2066x", fonts.chain(persian)) == persian + "x"  # bidi: dropped
