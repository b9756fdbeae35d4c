"""Unicode fonts for printed badges: which font prints which character, and what prints as "?".

Names that fit Latin-1 print in the PDF core fonts (nothing to embed). Any other name prints in open
fonts (OFL) shipped as Python packages the setup installs (never downloaded at run time): Noto Sans
(Latin, Greek, Cyrillic, Vietnamese, Devanagari), Noto Sans Arabic (Arabic, Persian, Urdu), Heebo
(Hebrew with its points: no Noto Sans Hebrew is packaged), Noto Sans Tamil, Noto Sans Thai and Noto
Sans CJK (Chinese, Japanese, Korean: one collection, the face chosen by the name's script). A
character none of them has is transliterated if it decomposes to one they have, else printed as "?".
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from fontTools.ttLib import TTCollection, TTFont


@dataclass(frozen=True)
class Face:
    family: str  # the name the PDF registers it under
    path: Path
    index: int = 0  # face number inside a collection (.ttc)


def _package_file(package: str, *parts: str) -> Path:
    return Path(str(files(package).joinpath(*parts)))


SANS = Face("esc-sans", _package_file("fontpkg_noto_sans", "files", "NotoSans[wdth,wght].ttf"))
ARABIC = Face(
    "esc-arabic", _package_file("fontpkg_noto_sans_arabic", "files", "NotoSansArabic[wdth,wght].ttf")
)
HEBREW = Face("esc-hebrew", _package_file("fontpkg_heebo", "files", "Heebo[wght].ttf"))
TAMIL = Face("esc-tamil", _package_file("fontpkg_noto_sans_tamil", "files", "NotoSansTamil[wdth,wght].ttf"))
THAI = Face("esc-thai", _package_file("fontpkg_noto_sans_thai", "files", "NotoSansThai[wdth,wght].ttf"))
_CJK = _package_file("noto_cjk_sans_otc", "NotoSansCJK-Regular.ttc")
# Noto's collection order: JP, KR, SC, TC, HK. Han characters look different in each region's face, so
# one name is set in one face: Korean if it has Hangul, Japanese if it has kana, else Chinese (SC).
CJK_JP, CJK_KR, CJK_SC = Face("esc-cjk-jp", _CJK, 0), Face("esc-cjk-kr", _CJK, 1), Face("esc-cjk-sc", _CJK, 2)


@functools.cache
def cmap(face: Face) -> frozenset[int]:
    """The code points ``face`` has a glyph for (read once per process: ~0.1 s for the CJK face)."""
    if face.path.suffix == ".ttc":
        with TTCollection(face.path, lazy=True) as collection:
            return frozenset(collection.fonts[face.index].getBestCmap())
    with TTFont(face.path, lazy=True) as font:
        return frozenset(font.getBestCmap())


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@functools.cache
def _covered(faces: tuple[Face, ...]) -> frozenset[int]:
    return frozenset().union(*(cmap(f) for f in faces))


_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF))


def cjk_face(text: str) -> Face:
    def has(ranges: tuple[tuple[int, int], ...]) -> bool:
        return any(lo <= ord(c) <= hi for c in text for lo, hi in ranges)

    return CJK_KR if has(_HANGUL) else CJK_JP if has(_KANA) else CJK_SC


def chain(text: str) -> tuple[Face, ...]:
    """The faces that print ``text``, in order of preference."""
    return (SANS, ARABIC, HEBREW, TAMIL, THAI, cjk_face(text))


def faces_for(text: str) -> tuple[Face, ...]:
    """The faces a PDF must embed to print ``text`` (already ``printable``): Noto Sans, and a fallback
    only for characters the faces before it lack. Each embedded face costs parsing and subsetting."""
    chosen = [SANS]
    for face in chain(text)[1:]:
        if any(ord(c) in cmap(face) and not any(ord(c) in cmap(f) for f in chosen) for c in text):
            chosen.append(face)
    return tuple(chosen)


def printable(text: str, faces: tuple[Face, ...]) -> str:
    """``text`` NFC-normalised, control characters and line breaks as spaces, format characters no
    face has (bidi marks) dropped, other characters no face has decomposed (NFKD: "ﬁ" -> "fi") or
    replaced by "?". A ZWNJ in a Persian name stays: the Arabic face has it."""
    covered = _covered(faces)
    out = []
    for ch in unicodedata.normalize("NFC", text):
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif ch in _BIDI_CONTROLS:
            continue  # would reorder what is printed (the source checks quarantine them first)
        elif ord(ch) in covered:
            out.append(ch)
        elif category == "Cf":
            continue
        else:
            parts = [c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)]
            out.append("".join(parts) if parts and all(ord(c) in covered for c in parts) else "?")
    return "".join(out)
