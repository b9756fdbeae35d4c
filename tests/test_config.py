"""Configuration: every invalid value fails fast with one line naming the university and the field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from etl.config import load_settings, parse_settings
from etl.demo.config import demo_config_toml
from etl.errors import ConfigError


def _raw() -> dict:
    return tomllib.loads(demo_config_toml())


def _parse(raw: dict, tmp_path: Path):
    return parse_settings(raw, home=tmp_path, database_url="sqlite://", config_path=tmp_path / "c.toml")


def test_demo_config_parses(tmp_path: Path) -> None:
    s = _parse(_raw(), tmp_path)
    assert s.codes == ["unife", "unipa"]
    unife = s.ateneo("unife")
    assert unife.pic == "999978433"
    assert unife.esse3_url == f"sqlite:///{tmp_path}/esse3-unife.sqlite"
    assert unife.closing_reasons["TIT"] == "graduated"
    assert s.academic_years == list(range(2019, 2026))
    assert s.ateneo("unipa").consent == "opt_in"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("pic", "12345678", "university unife: field pic"),
        ("pic", "12345678a", "university unife: field pic"),
        ("schac_home_organization", "not a domain", "university unife: field schac_home_organization"),
        ("person_key", "COD_FIS", "codice fiscale"),
        ("person_key", "MATRICOLA", "matricola changes with every career"),
        ("person_key", "EMAIL", "university unife: field person_key"),
        ("router_api_key_env", "sk-live-123", "university unife: field router_api_key_env"),
        ("consent", "maybe", "university unife: field consent"),
        ("closing_reasons", {"TIT": "party"}, "university unife: field closing_reasons.TIT"),
        ("finalised", {"statuses": ["I", "A"]}, "university unife: field finalised.statuses"),
        ("esse3_url", "oracle+oracledb://esse3:${NO_SUCH_VAR_FOR_TEST}@db/ESSE3", "NO_SUCH_VAR_FOR_TEST"),
        ("name", "", "university unife: field name: missing"),
    ],
)
def test_invalid_field_names_university_and_field(tmp_path: Path, field: str, value, expected: str) -> None:
    raw = _raw()
    raw["atenei"][0][field] = value
    with pytest.raises(ConfigError) as e:
        _parse(raw, tmp_path)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_code_and_bad_router(tmp_path: Path) -> None:
    raw = _raw()
    raw["atenei"][1]["code"] = "unife"
    with pytest.raises(ConfigError, match="university unife: field code: duplicated"):
        _parse(raw, tmp_path)
    raw = _raw()
    raw["router"]["url"] = "ftp://router"
    with pytest.raises(ConfigError, match="router: field url"):
        _parse(raw, tmp_path)
    raw = _raw()
    raw["academic_years"] = {"first": 2025, "last": 2019}
    with pytest.raises(ConfigError, match="academic_years"):
        _parse(raw, tmp_path)


def test_esse3_url_expands_environment_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESSE3_PW_TEST", "s3cret")
    raw = _raw()
    raw["atenei"][0]["esse3_url"] = "oracle+oracledb://esse3:${ESSE3_PW_TEST}@db/ESSE3"
    assert _parse(raw, tmp_path).ateneo("unife").esse3_url == "oracle+oracledb://esse3:s3cret@db/ESSE3"


def test_load_settings_errors_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESC_SYNC_HOME", str(tmp_path))
    monkeypatch.delenv("ESC_SYNC_CONFIG", raising=False)
    monkeypatch.delenv("ESC_SYNC_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError, match="not found"):
        load_settings()
    (tmp_path / "esc-sync.toml").write_text("[[atenei]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml())
    s = load_settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'state.sqlite'}"
    monkeypatch.setenv("ESC_SYNC_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert load_settings().database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: r.update(export={"retention_full": 2}), "unknown section(s) export"),
        (lambda r: r["router"].update(timeout=3), "router: unknown key(s) timeout"),
        (lambda r: r["atenei"][0].update(consenso="automatic"), "university unife: unknown key(s) consenso"),
        (lambda r: r["atenei"][0]["finalised"].update(status=["A"]), "university unife: finalised: unknown"),
        (lambda r: r.update(exports={"retention": 2}), "exports: unknown key(s) retention"),
        (lambda r: r.update(exports={"retention_full": 0}), "exports: field retention_full"),
        (lambda r: r.update(esse3={"max_future_skew_minutes": -1}), "esse3: field max_future_skew_minutes"),
        (lambda r: r["atenei"][0].update(escn_prefix=1000), "university unife: field escn_prefix"),
        (lambda r: r.update(runs={"wait_timeout_s": "10m"}), "runs: field wait_timeout_s"),
        (lambda r: r.update(runs={"wait_timeout": 10}), "runs: unknown key(s) wait_timeout"),
    ],
)
def test_unknown_keys_and_bad_sections_stop_with_one_line(tmp_path: Path, edit, expected: str) -> None:
    raw = _raw()
    raw.setdefault("router", {})
    raw["atenei"][0].setdefault("finalised", {})
    edit(raw)
    with pytest.raises(ConfigError) as e:
        _parse(raw, tmp_path)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_exports_esse3_and_escn_prefix_sections_are_honoured(tmp_path: Path) -> None:
    import datetime as dt

    from etl.domain.export_policy import ExportPolicy

    raw = _raw()
    raw["exports"] = {"retention_full": 5, "full_every_hours": 6, "full_changed_share": 0.5}
    raw["esse3"] = {"max_future_skew_minutes": 90}
    raw["runs"] = {"wait_timeout_s": 45}
    raw["atenei"][0]["escn_prefix"] = "007"
    s = _parse(raw, tmp_path)
    assert s.run_wait_timeout_s == 45 and _parse(_raw(), tmp_path).run_wait_timeout_s == 600
    assert s.exports == ExportPolicy(5, dt.timedelta(hours=6), 0.5)
    assert ExportPolicy.from_settings(s) == s.exports
    assert s.esse3_future_skew == dt.timedelta(minutes=90)
    assert s.ateneo("unife").escn_prefix == 7 and s.ateneo("unipa").escn_prefix == 1
