"""The QR paired with the ESC logo: horizontal (logo to the right) or vertical (logo above).

The ESC logo is the Commission's artwork: we never ship it. It comes from a configured file (PNG, or
SVG for SVG output); without one a neutral placeholder (grey rounded rectangle reading "logo") keeps
its place, so layouts and printouts look the same before the real file is configured.

Geometry is in QR modules so PNG, SVG and PDF share it: the logo is as tall (horizontal) or as wide
(vertical) as the 33-module symbol, separated from it by the symbol's own 4-module quiet zone, with a
4-module margin on its outer sides. Nothing ever intrudes into the quiet zone.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from defusedxml import ElementTree as SafeET
from PIL import Image, ImageDraw, ImageFont

from etl.render.qr import QUIET_ZONE, SYMBOL_MODULES, TOTAL_MODULES

# The placeholder's width/height. The configured logo always uses its own proportions.
PLACEHOLDER_ASPECT = 1.0
PLACEHOLDER_FILL = "#d0d0d0"
PLACEHOLDER_TEXT = "#5a5a5a"
MAX_LOGO_BYTES = 5_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(px|pt|mm|cm|in)?\s*$")


class Orientation(StrEnum):
    HORIZONTAL = "horizontal"  # logo to the right of the QR
    VERTICAL = "vertical"  # logo above the QR


@dataclass(frozen=True)
class Logo:
    kind: Literal["png", "svg", "placeholder"]
    data: bytes  # the file's bytes; empty for the placeholder
    width: float  # intrinsic size (px, or SVG user units): only the proportions matter
    height: float

    @property
    def aspect(self) -> float:
        return self.width / self.height


PLACEHOLDER = Logo("placeholder", b"", PLACEHOLDER_ASPECT, 1.0)


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Composition:
    """Positions in QR modules; ``qr`` is the 41-module symbol including its quiet zone."""

    width: float
    height: float
    qr: Box
    logo: Box


def load_logo(path: Path | str | None) -> Logo:
    """The configured logo file, or the placeholder when no path is configured."""
    if path is None or str(path) == "":
        return PLACEHOLDER
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_LOGO_BYTES:
            raise ValueError(f"logo file {p} is {size} bytes, more than {MAX_LOGO_BYTES}")
        data = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"logo file {p} cannot be read: {exc.strerror or exc}") from exc
    try:
        return logo_from_bytes(data)
    except ValueError as exc:
        raise ValueError(f"logo file {p}: {exc}") from exc


def logo_from_bytes(data: bytes) -> Logo:
    """A PNG or SVG logo from its bytes; ValueError for anything else."""
    if not data:
        raise ValueError("the logo is empty")
    if data.startswith(_PNG_SIGNATURE):
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                w, h = im.size
        except Exception as exc:  # Pillow raises many types for corrupt files
            raise ValueError(f"not a readable PNG ({exc})") from exc
        return _checked(Logo("png", data, float(w), float(h)))
    width, height = _svg_size(data)
    return _checked(Logo("svg", data, width, height))


def layout(orientation: Orientation | str, logo_aspect: float = PLACEHOLDER_ASPECT) -> Composition:
    orientation = Orientation(orientation)
    if not 0.2 <= logo_aspect <= 5.0:
        raise ValueError(f"logo proportions {logo_aspect:.3f} (width/height) are implausible")
    qz, sym, total = QUIET_ZONE, SYMBOL_MODULES, TOTAL_MODULES
    if orientation is Orientation.HORIZONTAL:
        logo = Box(total, qz, sym * logo_aspect, sym)
        return Composition(total + logo.w + qz, total, Box(0, 0, total, total), logo)
    logo = Box(qz, qz, sym, sym / logo_aspect)
    return Composition(total, qz + logo.h + total, Box(0, qz + logo.h, total, total), logo)


def compose_png(
    qr_png: bytes, logo: Logo = PLACEHOLDER, orientation: Orientation | str = Orientation.HORIZONTAL
) -> bytes:
    """The QR PNG (as rendered by etl.render.qr) with the logo beside it, as an RGB PNG."""
    if logo.kind == "svg":
        raise ValueError("PNG output needs a PNG logo: the configured logo is SVG (configure a PNG file)")
    qr = _open_png(qr_png, "QR")
    if qr.width != qr.height or qr.width % TOTAL_MODULES:
        raise ValueError(f"QR image {qr.size} is not a {TOTAL_MODULES}-module square from render_qr")
    s = qr.width // TOTAL_MODULES  # px per module
    comp = layout(orientation, logo.aspect)
    canvas = Image.new("RGB", (round(comp.width * s), round(comp.height * s)), "white")
    canvas.paste(qr.convert("RGB"), (round(comp.qr.x * s), round(comp.qr.y * s)))
    box = tuple(round(v * s) for v in (comp.logo.x, comp.logo.y, comp.logo.w, comp.logo.h))
    x, y, w, h = box
    if logo.kind == "png":
        art = _open_png(logo.data, "logo").convert("RGBA").resize((w, h), Image.Resampling.LANCZOS)
        canvas.paste(art, (x, y), art)  # alpha over white
    else:
        _draw_placeholder(ImageDraw.Draw(canvas), x, y, w, h)
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()


def compose_svg(
    qr_svg: bytes, logo: Logo = PLACEHOLDER, orientation: Orientation | str = Orientation.HORIZONTAL
) -> bytes:
    """The QR SVG (as rendered by etl.render.qr) with the logo beside it; inlinable in HTML."""
    text = qr_svg.decode("utf-8") if isinstance(qr_svg, bytes) else qr_svg
    m = re.match(r'<svg [^>]*width="(\d+)"[^>]*viewBox="0 0 41 41"[^>]*>', text)
    if not m or not text.endswith("</svg>"):
        raise ValueError("QR SVG is not one rendered by etl.render.qr")
    s = int(m.group(1)) / TOTAL_MODULES  # CSS px per module, as in the QR's own SVG
    inner = text[m.end() : -len("</svg>")]
    comp = layout(orientation, logo.aspect)
    lb = comp.logo
    if logo.kind == "placeholder":
        art = _placeholder_svg(lb)
    else:
        mime = "image/png" if logo.kind == "png" else "image/svg+xml"
        # An <image> keeps the logo's ids/styles isolated and renders an SVG in static mode (no scripts).
        href = f"data:{mime};base64,{base64.b64encode(logo.data).decode('ascii')}"
        art = (
            f'<image x="{_n(lb.x)}" y="{_n(lb.y)}" width="{_n(lb.w)}" height="{_n(lb.h)}" '
            f'preserveAspectRatio="xMidYMid meet" href="{href}"/>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" '
        f'width="{_n(comp.width * s)}" height="{_n(comp.height * s)}" '
        f'viewBox="0 0 {_n(comp.width)} {_n(comp.height)}">'
        f'<rect width="{_n(comp.width)}" height="{_n(comp.height)}" fill="#fff"/>'
        f'<svg x="{_n(comp.qr.x)}" y="{_n(comp.qr.y)}" width="{TOTAL_MODULES}" height="{TOTAL_MODULES}" '
        f'viewBox="0 0 {TOTAL_MODULES} {TOTAL_MODULES}" shape-rendering="crispEdges">{inner}</svg>'
        f"{art}</svg>"
    ).encode()


def placeholder_corner_radius(w: float, h: float) -> float:
    return 0.12 * min(w, h)


def _draw_placeholder(draw: ImageDraw.ImageDraw, x: int, y: int, w: int, h: int) -> None:
    draw.rounded_rectangle(
        (x, y, x + w - 1, y + h - 1), radius=round(placeholder_corner_radius(w, h)), fill=PLACEHOLDER_FILL
    )
    size = max(6, round(min(w / 3.2, h / 2.2)))
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow built without FreeType: small bitmap font
        font = ImageFont.load_default()
    draw.text((x + w / 2, y + h / 2), "logo", fill=PLACEHOLDER_TEXT, font=font, anchor="mm")


def _placeholder_svg(b: Box) -> str:
    size = min(b.w / 3.2, b.h / 2.2)
    return (
        f'<rect x="{_n(b.x)}" y="{_n(b.y)}" width="{_n(b.w)}" height="{_n(b.h)}" '
        f'rx="{_n(placeholder_corner_radius(b.w, b.h))}" fill="{PLACEHOLDER_FILL}"/>'
        f'<text x="{_n(b.x + b.w / 2)}" y="{_n(b.y + b.h / 2)}" text-anchor="middle" '
        f'dominant-baseline="central" font-family="sans-serif" font-size="{_n(size)}" '
        f'fill="{PLACEHOLDER_TEXT}">logo</text>'
    )


def _open_png(data: bytes, what: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as exc:
        raise ValueError(f"{what} is not a readable image ({exc})") from exc
    return im


def _svg_size(data: bytes) -> tuple[float, float]:
    try:
        root = SafeET.fromstring(data)
    except Exception as exc:  # ParseError, or defusedxml refusing entities/DTDs
        raise ValueError(f"neither a PNG nor a parseable SVG ({exc})") from exc
    if not str(root.tag).endswith("svg"):
        raise ValueError(f"not an SVG: root element is {root.tag!r}")
    view_box = root.get("viewBox")
    if view_box:
        parts = view_box.replace(",", " ").split()
        try:
            _, _, w, h = (float(v) for v in parts)
        except ValueError as exc:
            raise ValueError(f"SVG viewBox {view_box!r} is not four numbers") from exc
        return w, h
    width, height = _LENGTH.match(root.get("width", "")), _LENGTH.match(root.get("height", ""))
    if not (width and height) or width.group(2) != height.group(2):
        raise ValueError("SVG has neither a viewBox nor width and height in the same absolute unit")
    return float(width.group(1)), float(height.group(1))


def _checked(logo: Logo) -> Logo:
    if logo.width <= 0 or logo.height <= 0:
        raise ValueError(f"logo size {logo.width} x {logo.height} is empty")
    layout(Orientation.HORIZONTAL, logo.aspect)  # raises on implausible proportions
    return logo


def _n(v: float) -> str:
    """Short, stable number text for SVG attributes."""
    return f"{v:.3f}".rstrip("0").rstrip(".")
