"""The embedded default: two demo universities whose Esse3 databases are SQLite files in the home."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoAteneo:
    code: str
    name: str
    pic: str
    domain: str
    seed: int
    matricola_base: int
    consent: str
    prints_physical_badges: bool


# PICs in the 9999xxxxx range used by the Commission's examples; fictitious universities.
DEMO_ATENEI = (
    DemoAteneo(
        "unife",
        "Università degli Studi di Ferrara (demo)",
        "999978433",
        "unife.it",
        11,
        100000,
        "automatic",
        True,
    ),
    DemoAteneo("unipa", "Università Demo di Palermo", "999912345", "unipa.it", 22, 500000, "opt_in", False),
)

FIRST_YEAR, LAST_YEAR = 2019, 2025


def esse3_path(home: Path, code: str) -> Path:
    return home / f"esse3-{code}.sqlite"


def key_env(code: str) -> str:
    return f"ESC_SYNC_ROUTER_KEY_{code.upper()}"


def demo_config_toml(
    router_url: str = "http://127.0.0.1:8765/esc-rest", atenei: Sequence[DemoAteneo] = DEMO_ATENEI
) -> str:
    """The demo configuration file; ``{home}`` is expanded when it is loaded."""
    parts = [
        "# esc-sync demo configuration (written by `esc-sync demo`; edit freely).\n",
        f"[academic_years]\nfirst = {FIRST_YEAR}\nlast = {LAST_YEAR}\n",
        f'[router]\nurl = "{router_url}"\nconcurrency = 16\n',
        '[qr]\nbase_url = "https://s.esc-r.eu/"\n',
        "[quarantine]\nwarn_share = 0.05\n",
    ]
    for a in atenei:
        parts.append(
            f"""[[atenei]]
code = "{a.code}"
name = "{a.name}"
pic = "{a.pic}"
schac_home_organization = "{a.domain}"
person_key = "PERS_ID"
esse3_url = "sqlite:///{{home}}/esse3-{a.code}.sqlite"
router_api_key_env = "{key_env(a.code)}"
consent = "{a.consent}"
prints_physical_badges = {str(a.prints_physical_badges).lower()}
write_back_badge = true     # ESCN, QR URL and status onto P01_BADGE (docs/esse3-badge-write-back.md)
write_back_qr_png = true
finalised = {{ statuses = ["A", "S", "X"], require_enrolment_date = true }}
closing_reasons = {{ TIT = "graduated", RIN = "withdrawn", DEC = "lapsed", TRU = "transferred" }}
"""
        )
    return "\n".join(parts)
