"""Settings: environment (home, state DB URL, config path) and the TOML file of universities.

Every invalid value fails fast with one line naming the university and the field. Secrets never
live here: a university names the *environment variable* that holds its Router API key, and an
Esse3 URL may reference environment variables as ``${NAME}`` (for the password).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from etl.domain.api_policy import API_KEYS, ApiPolicy
from etl.domain.enrolment import FinalisedRule
from etl.domain.esse3_time import machine_zone, zone
from etl.domain.export_policy import EXPORT_KEYS, ExportPolicy
from etl.domain.retention import RETENTION_KEYS, RetentionPolicy
from etl.domain.source_reads import ReadPolicy
from etl.domain.source_values import DEFAULT_FUTURE_SKEW
from etl.errors import ConfigError, check_keys
from etl.wallet.apple import AppleWalletConfig
from etl.wallet.google import GoogleWalletConfig
from etl.wallet.policy import WALLET_KEYS, WalletPolicy

CLOSING_CATEGORIES = ("graduated", "withdrawn", "lapsed", "transferred", "deceased", "other")
PERSON_KEYS = ("PERS_ID",)
CONSENT_MODES = ("automatic", "opt_in")
DEFAULT_QR_BASE = "https://s.esc-r.eu/"

_CODE = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")
_PIC = re.compile(r"^[0-9]{9}$")
_DOMAIN = re.compile(r"^(?=.{3,200}$)([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Ateneo:
    code: str
    name: str
    pic: str
    schac_home_organization: str
    person_key: str
    esse3_url: str
    router_api_key_env: str
    finalised: FinalisedRule
    closing_reasons: dict[str, str]
    consent: str = "automatic"
    prints_physical_badges: bool = False
    escn_prefix: int = 1  # the 3-digit server prefix in the node of the ESCNs esc-sync mints
    write_back_badge: bool = False  # ESCN, QR payload, status onto P01_BADGE (the site adds columns)
    write_back_qr_png: bool = False  # ... and the QR image
    apple_wallet: AppleWalletConfig | None = None  # [atenei.apple_wallet]: Apple Wallet passes
    google_wallet: GoogleWalletConfig | None = None  # [atenei.google_wallet]: Google Wallet passes

    def router_api_key(self) -> str | None:
        return os.environ.get(self.router_api_key_env) or None


@dataclass(frozen=True)
class RouterSettings:
    url: str = "http://127.0.0.1:8765/esc-rest"
    concurrency: int = 16
    requests_per_second: float | None = None
    timeout_s: float = 10.0
    max_retries: int = 6


EXECUTORS = ("in_process", "multiprocess", "celery")


@dataclass(frozen=True)
class DeploySettings:
    """A production deployment (``[deploy]``, README "Production"): Dagster on PostgreSQL, runs queued
    and launched by the daemon, steps on Celery workers. Its URLs come from the environment
    (``ESC_SYNC_DAGSTER_PG_URL``, ``ESC_SYNC_BROKER_URL``): they may hold passwords."""

    executor: str = "celery"
    max_concurrent_runs: int = 8  # runs (partitions) in flight across the deployment
    runs_per_university: int = 2  # a university's runs in flight: its Router key's share of the load
    router_steps: int = 8  # the esc_router pool: steps talking to the Router at once, all universities
    sensor_interval_s: int = 15  # how often the esse3_changes sensor looks (a tick is one query)
    run_host: bool = True  # runs start as forks of serve's warm run host (etl/deploy/run_host.py)
    batch_partitions: int = 7  # never-read partitions of a university per run (etl.batches); 1: none
    # Batches in flight across the deployment: as many as the workers (each runs one at a time). The
    # others wait in Dagster's queue, where they cost nothing; launched, each would hold a run process
    # polling for its Celery task. Fewer than max_concurrent_runs leaves room for single changes.
    batch_runs: int = 4


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    config_path: Path
    atenei: tuple[Ateneo, ...]
    first_academic_year: int
    last_academic_year: int
    router: RouterSettings = field(default_factory=RouterSettings)
    quarantine_warn_share: float = 0.05
    qr_base_url: str = DEFAULT_QR_BASE
    logo_path: Path | None = None
    exports: ExportPolicy = field(default_factory=ExportPolicy)
    # How far ahead of ours Esse3's clock may believably run: a later DATA_MOD is quarantined and never
    # moves a watermark (run esc-sync in Esse3's time zone, or widen this by the difference).
    esse3_future_skew: dt.timedelta = DEFAULT_FUTURE_SKEW
    # The zone Esse3 writes DATA_MOD in (an Oracle DATE has none): IANA name, default the machine's.
    esse3_timezone: str = "UTC"
    # More than this share of a partition's careers or badges vanishing at once is held for a person.
    max_vanished_share: float = 0.05
    esse3_sql_dir: Path | None = None  # a site's own versions of etl/sql/esse3/*.sql
    api_public_url: str | None = None  # where vendors reach the REST service: links are built on it
    api: ApiPolicy = field(default_factory=ApiPolicy)  # token expiry, lookup limits, throttles, proxies
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)  # when personal data is erased
    wallet: WalletPolicy = field(default_factory=WalletPolicy)  # Apple's push notifications
    run_wait_timeout_s: float = 600.0  # how long a run waits for a Router pool slot held by live runs
    deploy: DeploySettings | None = None  # set: this configuration is a production deployment

    @property
    def esse3_zone(self) -> ZoneInfo:
        return zone(self.esse3_timezone)

    @property
    def read_policy(self) -> ReadPolicy:
        return ReadPolicy(
            future_skew=self.esse3_future_skew,
            zone=self.esse3_zone,
            max_vanished_share=self.max_vanished_share,
        )

    @property
    def academic_years(self) -> list[int]:
        return list(range(self.first_academic_year, self.last_academic_year + 1))

    def ateneo(self, code: str) -> Ateneo:
        for a in self.atenei:
            if a.code == code:
                return a
        raise ConfigError(f"unknown university {code!r} (configured: {', '.join(self.codes)})")

    @property
    def codes(self) -> list[str]:
        return [a.code for a in self.atenei]


def current_academic_year(today: dt.date | None = None) -> int:
    """Italian academic years start in autumn; enrolments open in summer, so August onwards is next."""
    today = today or dt.date.today()
    return today.year if today.month >= 8 else today.year - 1


def home_from_env() -> Path:
    return Path(os.environ.get("ESC_SYNC_HOME", ".esc-sync")).resolve()


def default_database_url(home: Path) -> str:
    return f"sqlite:///{home / 'state.sqlite'}"


def load_settings(config_path: Path | str | None = None) -> Settings:
    home = home_from_env()
    path = Path(config_path or os.environ.get("ESC_SYNC_CONFIG") or home / "esc-sync.toml")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (set ESC_SYNC_CONFIG or run `esc-sync demo`)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    database_url = os.environ.get("ESC_SYNC_DATABASE_URL") or default_database_url(home)
    return parse_settings(raw, home=home, database_url=database_url, config_path=path)


DEPLOY_COUNTS = (
    "max_concurrent_runs",
    "runs_per_university",
    "router_steps",
    "sensor_interval_s",
    "batch_partitions",
    "batch_runs",
)
# Every key the configuration knows: anything else is a typo that would otherwise be ignored silently.
KNOWN_SECTIONS: dict[str, frozenset[str] | None] = {
    "academic_years": frozenset(("first", "last")),
    "router": frozenset(("url", "concurrency", "requests_per_second", "timeout_s", "max_retries")),
    "qr": frozenset(("base_url", "logo_path")),
    "quarantine": frozenset(("warn_share",)),
    "exports": EXPORT_KEYS,
    "esse3": frozenset(("max_future_skew_minutes", "timezone", "max_vanished_share", "sql_dir")),
    "api": API_KEYS,
    "retention": RETENTION_KEYS,
    "runs": frozenset(("wait_timeout_s",)),
    "wallet": WALLET_KEYS,
    "deploy": frozenset(("executor", "run_host", *DEPLOY_COUNTS)),
    "atenei": None,  # checked per university
}
ATENEO_KEYS = frozenset(
    (
        *("code", "name", "pic", "schac_home_organization", "person_key", "esse3_url"),
        *("router_api_key_env", "consent", "prints_physical_badges", "finalised", "closing_reasons"),
        *("escn_prefix", "write_back_badge", "write_back_qr_png", "apple_wallet", "google_wallet"),
    )
)
FINALISED_KEYS = frozenset(("statuses", "require_enrolment_date"))


def parse_settings(raw: dict[str, Any], *, home: Path, database_url: str, config_path: Path) -> Settings:
    unknown = sorted(set(raw) - set(KNOWN_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{config_path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(KNOWN_SECTIONS)})"
        )
    for section, keys in KNOWN_SECTIONS.items():
        if keys is not None and section in raw:
            check_keys(section, raw[section], keys)
    atenei_raw = raw.get("atenei")
    if not isinstance(atenei_raw, list) or not atenei_raw:
        raise ConfigError(f"{config_path}: at least one [[atenei]] table is required")
    atenei = tuple(_parse_ateneo(a, i, home) for i, a in enumerate(atenei_raw))
    seen: set[str] = set()
    for a in atenei:
        if a.code in seen:
            raise ConfigError(f"university {a.code}: field code: duplicated")
        seen.add(a.code)

    years = raw.get("academic_years", {})
    first = years.get("first", 2019)
    last = years.get("last", current_academic_year())
    if not (isinstance(first, int) and isinstance(last, int) and 1990 <= first <= last <= 2100):
        raise ConfigError(
            f"academic_years: first={first!r} last={last!r}: need 1990 <= first <= last <= 2100"
        )

    r = raw.get("router", {})
    rps = r.get("requests_per_second")
    router = RouterSettings(
        url=_str(r.get("url", RouterSettings.url), "router", "url").rstrip("/"),
        concurrency=_positive_int(r.get("concurrency", 16), "router", "concurrency"),
        requests_per_second=None if not rps else float(rps),
        timeout_s=float(r.get("timeout_s", 10.0)),
        max_retries=_positive_int(r.get("max_retries", 6), "router", "max_retries"),
    )
    if not router.url.startswith(("http://", "https://")):
        raise ConfigError(f"router: field url: {router.url!r} is not an http(s) URL")

    qr = raw.get("qr", {})
    qr_base = _str(qr.get("base_url", DEFAULT_QR_BASE), "qr", "base_url")
    if not qr_base.startswith(("http://", "https://")):
        raise ConfigError(f"qr: field base_url: {qr_base!r} is not an http(s) URL")
    logo = qr.get("logo_path")
    share = raw.get("quarantine", {}).get("warn_share", 0.05)
    public = raw.get("api", {}).get("public_url")
    if public is not None and (not isinstance(public, str) or not public.startswith(("http://", "https://"))):
        raise ConfigError(f"api: field public_url: {public!r} is not an http(s) URL")
    skew = raw.get("esse3", {}).get("max_future_skew_minutes", DEFAULT_FUTURE_SKEW.total_seconds() / 60)
    if isinstance(skew, bool) or not isinstance(skew, int | float) or not 0 <= skew <= 24 * 60:
        raise ConfigError(
            f"esse3: field max_future_skew_minutes: {skew!r} must be a number of minutes 0-1440"
        )
    esse3 = raw.get("esse3", {})
    tz = esse3.get("timezone", None)
    if tz is None:
        tz = machine_zone()
    elif not isinstance(tz, str):
        raise ConfigError(f"esse3: field timezone: {tz!r} is not an IANA time zone name (e.g. Europe/Rome)")
    else:
        try:
            zone(tz)
        except ValueError as e:
            raise ConfigError(f"esse3: field timezone: {e}") from None
    vanished = esse3.get("max_vanished_share", Settings.max_vanished_share)
    if isinstance(vanished, bool) or not isinstance(vanished, int | float) or not 0 <= vanished <= 1:
        raise ConfigError(f"esse3: field max_vanished_share: {vanished!r} must be a share from 0 to 1")
    sql_dir = esse3.get("sql_dir")
    if sql_dir is not None:
        sql_dir = Path(_str(sql_dir, "esse3", "sql_dir").replace("{home}", str(home)))
        if not sql_dir.is_dir():
            raise ConfigError(f"esse3: field sql_dir: {sql_dir} is not a directory")
    wait = raw.get("runs", {}).get("wait_timeout_s", Settings.run_wait_timeout_s)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 24 * 3600:
        raise ConfigError(f"runs: field wait_timeout_s: {wait!r} must be a number of seconds 0-86400")
    return Settings(
        home=home,
        database_url=database_url,
        config_path=config_path,
        atenei=atenei,
        first_academic_year=first,
        last_academic_year=last,
        router=router,
        quarantine_warn_share=float(share),
        qr_base_url=qr_base if qr_base.endswith("/") else qr_base + "/",
        logo_path=Path(logo.replace("{home}", str(home))) if logo else None,
        exports=ExportPolicy.from_mapping(raw.get("exports", {})),
        esse3_future_skew=dt.timedelta(minutes=skew),
        esse3_timezone=tz,
        max_vanished_share=float(vanished),
        esse3_sql_dir=sql_dir,
        api_public_url=public,
        api=ApiPolicy.from_mapping(raw.get("api", {})),
        retention=RetentionPolicy.from_mapping(raw.get("retention", {})),
        wallet=WalletPolicy.from_mapping(raw.get("wallet", {}), home),
        run_wait_timeout_s=float(wait),
        deploy=_parse_deploy(raw["deploy"]) if "deploy" in raw else None,
    )


def _parse_deploy(d: dict[str, Any]) -> DeploySettings:
    executor = d.get("executor", DeploySettings.executor)
    if executor not in EXECUTORS:
        raise ConfigError(f"deploy: field executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    return DeploySettings(
        executor=executor,
        run_host=_flag({"run_host": True} | d, "run_host", "deploy"),
        **{
            name: _positive_int(d.get(name, getattr(DeploySettings, name)), "deploy", name)
            for name in DEPLOY_COUNTS
        },
    )


def _parse_ateneo(a: dict[str, Any], index: int, home: Path) -> Ateneo:
    who = f"university {a.get('code', f'#{index + 1}') if isinstance(a, dict) else f'#{index + 1}'}"
    check_keys(who, a, ATENEO_KEYS)
    if "finalised" in a:
        check_keys(f"{who}: finalised", a["finalised"], FINALISED_KEYS)

    def need(name: str) -> Any:
        if name not in a or a[name] in ("", None):
            raise ConfigError(f"{who}: field {name}: missing")
        return a[name]

    code = need("code")
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise ConfigError(f"{who}: field code: {code!r} must be 2-32 lower-case letters, digits, - or _")
    pic = str(need("pic"))
    if not _PIC.fullmatch(pic):
        raise ConfigError(f"{who}: field pic: {pic!r} must be exactly 9 digits")
    schac = str(need("schac_home_organization")).lower()
    if not _DOMAIN.fullmatch(schac):
        raise ConfigError(f"{who}: field schac_home_organization: {schac!r} is not an internet domain")
    person_key = str(a.get("person_key", "PERS_ID")).upper()
    if person_key in ("COD_FIS", "CODICE_FISCALE", "CF"):
        raise ConfigError(
            f"{who}: field person_key: the codice fiscale must never be used to build the ESI "
            "(a national personal number, unsuitable under GDPR); use PERS_ID"
        )
    if person_key == "MATRICOLA":
        raise ConfigError(
            f"{who}: field person_key: the matricola changes with every career, but an ESI can never "
            "change; use PERS_ID"
        )
    if person_key not in PERSON_KEYS:
        raise ConfigError(f"{who}: field person_key: {person_key!r} unsupported (one of {PERSON_KEYS})")
    key_env = str(need("router_api_key_env"))
    if not _ENV_NAME.fullmatch(key_env):
        raise ConfigError(
            f"{who}: field router_api_key_env: must be the NAME of an environment variable "
            "(upper case), never the key itself"
        )
    consent = a.get("consent", "automatic")
    if consent not in CONSENT_MODES:
        raise ConfigError(f"{who}: field consent: {consent!r} must be one of {CONSENT_MODES}")

    escn_prefix = a.get("escn_prefix", 1)
    if isinstance(escn_prefix, str) and escn_prefix.isdigit() and len(escn_prefix) <= 3:
        escn_prefix = int(escn_prefix)  # "001" as written in the ESCN
    if isinstance(escn_prefix, bool) or not isinstance(escn_prefix, int) or not 0 <= escn_prefix <= 999:
        raise ConfigError(
            f'{who}: field escn_prefix: {escn_prefix!r} must be a number 0-999 (e.g. 1 or "001")'
        )

    fin = a.get("finalised", {})
    statuses = fin.get("statuses", ["A", "S", "X"])
    if not isinstance(statuses, list) or not statuses or not all(isinstance(s, str) for s in statuses):
        raise ConfigError(f"{who}: field finalised.statuses: must be a non-empty list of status codes")
    if "I" in statuses:
        raise ConfigError(f"{who}: field finalised.statuses: 'I' is the provisional status, never finalised")
    finalised = FinalisedRule(
        statuses=frozenset(statuses),
        require_enrolment_date=bool(fin.get("require_enrolment_date", True)),
    )
    reasons = a.get("closing_reasons", {})
    if not isinstance(reasons, dict):
        raise ConfigError(f"{who}: field closing_reasons: must be a table of code = category")
    for reason_code, category in reasons.items():
        if category not in CLOSING_CATEGORIES:
            raise ConfigError(
                f"{who}: field closing_reasons.{reason_code}: {category!r} "
                f"must be one of {CLOSING_CATEGORIES}"
            )
    return Ateneo(
        code=code,
        name=str(need("name")),
        pic=pic,
        schac_home_organization=schac,
        person_key=person_key,
        esse3_url=_expand(str(need("esse3_url")), home, who),
        router_api_key_env=key_env,
        finalised=finalised,
        closing_reasons=dict(reasons),
        consent=consent,
        prints_physical_badges=_flag(a, "prints_physical_badges", who),
        escn_prefix=escn_prefix,
        write_back_badge=_flag(a, "write_back_badge", who),
        write_back_qr_png=_flag(a, "write_back_qr_png", who),
        apple_wallet=AppleWalletConfig.from_mapping(a["apple_wallet"], who, home)
        if "apple_wallet" in a
        else None,
        google_wallet=(
            GoogleWalletConfig.from_mapping(a["google_wallet"], who, home) if "google_wallet" in a else None
        ),
    )


def _flag(table: dict[str, Any], name: str, who: str) -> bool:
    value = table.get(name, False)
    if not isinstance(value, bool):  # "false" in quotes would otherwise read as true
        raise ConfigError(f"{who}: field {name}: {value!r} must be true or false")
    return value


def _expand(url: str, home: Path, who: str) -> str:
    def env(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise ConfigError(f"{who}: field esse3_url: environment variable {m.group(1)} is not set")
        return value

    return _ENV_REF.sub(env, url.replace("{home}", str(home)))


def _str(v: Any, section: str, name: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{section}: field {name}: must be a non-empty string")
    return v


def _positive_int(v: Any, section: str, name: str) -> int:
    if not isinstance(v, int) or v < 1:
        raise ConfigError(f"{section}: field {name}: {v!r} must be a positive integer")
    return v
