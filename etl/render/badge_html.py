"""The virtual badge as one self-contained HTML page (web student area, student app WebView).

Everything is inline (CSS, the QR + logo SVG, the logo itself as a data: URI inside that SVG) and a
Content-Security-Policy forbids scripts and any fetch, so the page works offline and a text that
escaped escaping still could not run. Every text field goes through ``html.escape``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape

from etl.render.badge_view import BadgeView
from etl.render.logo import PLACEHOLDER, Orientation, compose_svg, logo_from_bytes

CARD_W_MM, CARD_H_MM = 85.60, 53.98  # ISO/IEC 7810 ID-1

_CSS = """
*{box-sizing:border-box;margin:0;padding:0}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;background:#eef1f5;
  color:#1b1f24;display:flex;justify-content:center;padding:16px}
.wrap{width:min(100%,480px);container-type:inline-size}
.badge{position:relative;overflow:hidden;aspect-ratio:85.60/53.98;border-radius:3.5cqw;background:#fff;
  box-shadow:0 2px 10px rgba(0,0,0,.18);display:grid;grid-template-rows:auto 1fr auto;font-size:2.6cqw}
.head{background:#003399;color:#fff;padding:1.6cqw 3cqw;display:flex;justify-content:space-between;
  align-items:baseline;gap:2cqw}
.uni{font-weight:700;font-size:3.3cqw;line-height:1.15;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.esc{font-size:2.1cqw;opacity:.85;white-space:nowrap}
.body{display:grid;grid-template-columns:1fr 25cqw;gap:2.5cqw;padding:2cqw 3cqw 0;min-height:0}
dl{display:flex;flex-direction:column;min-width:0}
dt{color:#5b6470;font-size:1.9cqw;line-height:1.3}
dd{font-size:2.7cqw;font-weight:600;line-height:1.25;margin-bottom:.5cqw;overflow-wrap:anywhere}
dd.name{font-size:3.6cqw;font-weight:700}
dd.clamp{display:-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:2;overflow:hidden}
dd.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-weight:500;font-size:1.85cqw}
.qr svg{width:100%;height:auto;display:block}
.foot{display:flex;justify-content:space-between;align-items:center;gap:2cqw;padding:1.2cqw 3cqw 1.6cqw;
  font-size:2.1cqw;color:#5b6470;white-space:nowrap}
.status{font-weight:700;border-radius:99px;padding:.4cqw 2cqw;letter-spacing:.04em}
.badge.active .status{background:#e3f4e8;color:#0f6b2f}
.badge.inactive .status{background:#fde4e4;color:#a11212}
.badge.inactive .head{background:#6b7079}
.badge.inactive dl{opacity:.55}
.stamp{position:absolute;left:8%;top:42%;transform:rotate(-14deg);border:.6cqw solid #c01818;color:#c01818;
  font-weight:800;font-size:4.6cqw;padding:.6cqw 2.4cqw;border-radius:1.2cqw;background:rgba(255,255,255,.75);
  letter-spacing:.06em;pointer-events:none}
.wallets{display:flex;flex-wrap:wrap;justify-content:center;gap:10px;margin-top:14px}
.wallet{background:#000;color:#fff;border-radius:10px;padding:9px 16px;font-size:15px;font-weight:600;
  text-decoration:none;white-space:nowrap}
/* Let the text column shrink instead of pushing the QR out of the card. */
.badge{grid-template-columns:minmax(0,1fr)}.body{grid-template-columns:minmax(0,1fr) 25cqw}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass(frozen=True)
class WalletLinks:
    """Where the page's wallet buttons lead: the Apple pass (a link relative to the page, so whoever
    serves the page with its token serves the pass too) and the "Save to Google Wallet" URL."""

    apple: str | None = None
    google: str | None = None


def render_badge_html(
    view: BadgeView, qr_svg: bytes, logo_svg: bytes | None = None, wallets: WalletLinks | None = None
) -> str:
    """A complete HTML page showing the badge at credit-card proportions, with "Add to Apple Wallet"
    and "Save to Google Wallet" under an active card whose university issues those passes.

    ``qr_svg`` is ``render_qr(view.qr_payload).svg``; ``logo_svg`` the ESC logo file's bytes (SVG, or
    PNG also works), None for the neutral placeholder.
    """
    logo = logo_from_bytes(logo_svg) if logo_svg is not None else PLACEHOLDER
    # Logo above the QR: the tall pairing fits the card's right column.
    art = compose_svg(qr_svg, logo, Orientation.VERTICAL).decode("utf-8")
    e = _e
    state = "active" if view.is_active else "inactive"
    status_text = "VALIDA · VALID" if view.is_active else "NON VALIDA · NOT VALID"
    rows = [
        ("Nome · Name", view.full_name, "name"),
        ("Matricola · Student no.", view.matricola, ""),
        ("Corso · Programme", view.course_name, "clamp"),
        ("A.A. · Academic year", view.academic_year_label, ""),
        ("ESI", view.esi, "mono"),
        ("ESCN", view.escn, "mono"),
    ]
    dl = "".join(f'<dt>{e(label)}</dt><dd class="{cls}">{e(value)}</dd>' for label, value, cls in rows)
    validity = f"{_d(view.issued_at)} – {_d(view.expires_at)}"
    stamp = "" if view.is_active else f'<div class="stamp">{e(view.status)}</div>'
    buttons = ""
    if wallets is not None and view.is_active:
        links = [
            f'<a class="wallet {cls}" href="{e(href)}"{extra}>{label}</a>'
            for cls, href, extra, label in (
                ("apple", wallets.apple, "", "Add to Apple Wallet"),
                ("google", wallets.google, ' target="_blank" rel="noopener"', "Save to Google Wallet"),
            )
            if href
        ]
        buttons = f'<nav class="wallets">{"".join(links)}</nav>' if links else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="it"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>European Student Card – {e(view.full_name)}</title><style>{_CSS}</style></head>"
        f'<body><div class="wrap"><article class="badge {state}" data-status="{e(view.status)}" '
        f'data-card-type="{e(view.card_type)}" aria-label="European Student Card {e(view.full_name)}">'
        f'<header class="head"><span class="uni">{e(view.university_name)}</span>'
        '<span class="esc">European Student Card</span></header>'
        f'<div class="body"><dl>{dl}</dl>'
        f'<div class="qr" role="img" aria-label="QR {e(view.qr_payload)}">{art}</div></div>'
        f'<footer class="foot"><span>Validità · Validity {e(validity)}</span>'
        f'<span class="status">{e(status_text)}</span></footer>{stamp}'
        f"</article>{buttons}</div></body></html>\n"
    )


def _e(text: str) -> str:
    return escape(text, quote=True)


def _d(day: dt.date) -> str:
    return day.strftime("%d/%m/%Y")  # Italian convention on the card face
