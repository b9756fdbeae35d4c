"""Export file writers: Parquet and ZIP round trips, atomicity, validation and integrity checks."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import segno

from etl.domain.escn import mint_escn
from etl.exports import (
    EXPORT_SCHEMA,
    MANIFEST_COLUMNS,
    MANIFEST_SCHEMA,
    SCHEMA_DOC,
    ExportRow,
    InvalidRowError,
    sha256_file,
    validate_row,
    verify_file,
    write_export,
    zipstream,
)

PIC = "999978433"
NAMES = ["Zoë Ñúñez-D'Àngelo", "王小明", "Łukasz Żółć", 'Anna "Nan" Bianchi, Jr.', "Niccolò Ødegård 😀"]


def _qr(payload: str) -> tuple[bytes, bytes]:
    qr = segno.make(payload, error="m")
    png, svg = io.BytesIO(), io.BytesIO()
    qr.save(png, kind="png", scale=2)
    qr.save(svg, kind="svg", scale=2)
    return png.getvalue(), svg.getvalue()


_PNG, _SVG = _qr("https://esc.example/sample")


def make_row(i: int, *, real_qr: bool = False, **changes: object) -> ExportRow:
    escn = mint_escn(PIC, unix_millis=1_760_000_000_000 + i, clock_seq=7)
    payload = f"https://esc.example/{escn}"
    png, svg = _qr(payload) if real_qr else (_PNG, _SVG)
    row = ExportRow(
        university="unipi",
        pic=PIC,
        academic_year=2025,
        matricola=f"{600000 + i}",
        full_name=NAMES[i % len(NAMES)],
        esi=f"urn:schac:personalUniqueCode:int:esi:unipi.it:{1000 + i}",
        escn=escn,
        card_type="smartcard",
        issued_at=dt.date(2025, 9, 1),
        expires_at=dt.date(2026, 10, 31),
        status="active",
        qr_payload=payload,
        qr_png=png,
        qr_svg=svg,
    )
    return dataclasses.replace(row, **changes)


def _record(row: ExportRow, columns: list[str]) -> dict[str, object]:
    return {name: getattr(row, name) for name in columns}


# --- round trip --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    rows = [make_row(i, real_qr=True) for i in range(5)]
    directory = tmp_path_factory.mktemp("export")
    files = write_export(iter(rows), directory, "unipi-2025-0001", batch_size=2)
    return rows, directory, files


def test_result_describes_both_files(exported) -> None:
    rows, directory, files = exported
    assert files.export_id == "unipi-2025-0001"
    assert files.parquet.path == directory / "unipi-2025-0001.parquet"
    assert files.zip.path == directory / "unipi-2025-0001.zip"
    for f in (files.parquet, files.zip):
        assert f.rows == len(rows)
        assert f.size_bytes == f.path.stat().st_size
        assert f.sha256 == sha256_file(f.path)
        assert verify_file(f.path, f.sha256)
    assert sorted(p.name for p in directory.iterdir()) == ["unipi-2025-0001.parquet", "unipi-2025-0001.zip"]


def test_parquet_round_trip(exported) -> None:
    rows, _, files = exported
    parquet = pq.ParquetFile(files.parquet.path)
    table = parquet.read()
    assert table.schema.equals(EXPORT_SCHEMA, check_metadata=True)
    assert table.to_pylist() == [_record(r, EXPORT_SCHEMA.names) for r in rows]
    meta = parquet.metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1]
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}


def test_zip_members_and_compression(exported) -> None:
    rows, _, files = exported
    with zipfile.ZipFile(files.zip.path) as zf:
        assert zf.testzip() is None
        expected = [f"qr/{r.escn}.{ext}" for r in rows for ext in ("png", "svg")]
        assert zf.namelist() == [*expected, "manifest.csv", "manifest.parquet", "SHA256SUMS"]
        for r in rows:
            assert zf.read(f"qr/{r.escn}.png") == r.qr_png
            assert zf.read(f"qr/{r.escn}.svg") == r.qr_svg
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
    assert kinds[f"qr/{rows[0].escn}.png"] == zipfile.ZIP_STORED
    assert kinds[f"qr/{rows[0].escn}.svg"] == zipfile.ZIP_DEFLATED
    assert kinds["manifest.csv"] == zipfile.ZIP_DEFLATED
    assert kinds["manifest.parquet"] == zipfile.ZIP_STORED


def test_zip_manifests_match_rows_and_keep_unicode(exported) -> None:
    rows, _, files = exported
    with zipfile.ZipFile(files.zip.path) as zf:
        csv_text = zf.read("manifest.csv").decode("utf-8")
        manifest = pq.read_table(io.BytesIO(zf.read("manifest.parquet")))
    assert not csv_text.startswith("\ufeff")
    records = list(csv.reader(io.StringIO(csv_text, newline="")))
    assert records[0] == list(MANIFEST_COLUMNS)
    assert records[1:] == [
        [str(v) if not isinstance(v, dt.date) else v.isoformat() for v in _record(r, records[0]).values()]
        for r in rows
    ]
    assert [r[records[0].index("full_name")] for r in records[1:]] == [r.full_name for r in rows]
    assert manifest.schema.equals(MANIFEST_SCHEMA, check_metadata=True)
    assert manifest.to_pylist() == [_record(r, list(MANIFEST_COLUMNS)) for r in rows]
    assert manifest.column("full_name").to_pylist() == NAMES


def test_sha256sums_cover_every_other_member(exported) -> None:
    _, _, files = exported
    with zipfile.ZipFile(files.zip.path) as zf:
        lines = zf.read("SHA256SUMS").decode("ascii").splitlines()
        sums = {}
        for line in lines:
            digest, sep, name = line.partition("  ")
            assert sep and len(digest) == 64, line
            sums[name] = digest
        assert len(sums) == len(lines)
        assert set(sums) == set(zf.namelist()) - {"SHA256SUMS"}
        for name, digest in sums.items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest, name


def test_empty_input_writes_valid_empty_files(tmp_path: Path) -> None:
    files = write_export([], tmp_path, "empty")
    assert files.parquet.rows == files.zip.rows == 0
    table = pq.read_table(files.parquet.path)
    assert table.num_rows == 0
    assert table.schema.equals(EXPORT_SCHEMA, check_metadata=True)
    with zipfile.ZipFile(files.zip.path) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == ["manifest.csv", "manifest.parquet", "SHA256SUMS"]
        assert zf.read("manifest.csv").decode() == ",".join(MANIFEST_COLUMNS) + "\r\n"
        assert pq.read_table(io.BytesIO(zf.read("manifest.parquet"))).num_rows == 0
        assert len(zf.read("SHA256SUMS").splitlines()) == 2
    assert verify_file(files.zip.path, files.zip.sha256)


def test_files_are_private_to_the_owner(exported) -> None:
    # They hold personal data: mkstemp's 0600 is kept on purpose.
    _, _, files = exported
    assert {stat.S_IMODE(f.path.stat().st_mode) for f in (files.parquet, files.zip)} == {0o600}


def _unzip_test(path: Path) -> None:
    """Info-ZIP's own check, when installed: a second, independent reader of our ZIP structure."""
    if shutil.which("unzip"):
        result = subprocess.run(["unzip", "-tqq", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_zip_passes_info_zip_test(exported) -> None:
    _unzip_test(exported[2].zip.path)


def test_zip64_records_when_limits_are_crossed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real ZIP64 needs > 65,534 members (the bench writes 200,003) or > 2 GiB; lowered limits take the
    # same code paths: ZIP64 extras in local and central headers and the ZIP64 end records.
    monkeypatch.setattr(zipstream, "_ZIP64_LIMIT", 300)
    monkeypatch.setattr(zipstream, "_ZIP_COUNT_LIMIT", 4)
    rows = [make_row(i, real_qr=True) for i in range(3)]
    files = write_export(rows, tmp_path, "zip64")
    raw = files.zip.path.read_bytes()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw
    with zipfile.ZipFile(files.zip.path) as zf:
        assert zf.testzip() is None
        assert len(zf.namelist()) == 9
        assert zf.read(f"qr/{rows[2].escn}.svg") == rows[2].qr_svg
        assert any(info.header_offset > 300 for info in zf.infolist())
    _unzip_test(files.zip.path)


def test_rewriting_an_export_replaces_it(tmp_path: Path) -> None:
    write_export([make_row(1)], tmp_path, "again")
    files = write_export([make_row(2), make_row(3)], tmp_path, "again")
    assert pq.read_table(files.parquet.path).num_rows == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.parquet", "again.zip"]


# --- atomicity ---------------------------------------------------------------------------------------


def _failing_rows(n_good: int) -> Iterator[ExportRow]:
    for i in range(n_good):
        yield make_row(i)
    raise RuntimeError("source went away")


def test_failure_midway_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="source went away"):
        write_export(_failing_rows(7), tmp_path, "broken", batch_size=3)  # two row groups were flushed
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_keeps_the_previous_export(tmp_path: Path) -> None:
    before = write_export([make_row(1)], tmp_path, "same-id")
    with pytest.raises(RuntimeError):
        write_export(_failing_rows(4), tmp_path, "same-id", batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same-id.parquet", "same-id.zip"]
    assert verify_file(before.parquet.path, before.parquet.sha256)
    assert verify_file(before.zip.path, before.zip.sha256)


def test_interrupt_midway_leaves_no_file(tmp_path: Path) -> None:
    def interrupted() -> Iterator[ExportRow]:
        yield make_row(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_export(interrupted(), tmp_path, "ctrl-c")
    assert list(tmp_path.iterdir()) == []


def test_invalid_row_midway_leaves_no_file(tmp_path: Path) -> None:
    rows = [make_row(0), make_row(1), make_row(2, esi="")]
    with pytest.raises(InvalidRowError, match="esi"):
        write_export(rows, tmp_path, "bad", batch_size=1)
    assert list(tmp_path.iterdir()) == []


def test_duplicate_escn_is_refused(tmp_path: Path) -> None:
    row = make_row(0)
    with pytest.raises(InvalidRowError, match="twice") as info:
        write_export([row, make_row(1), row], tmp_path, "dup")
    assert info.value.field == "escn" and info.value.escn == row.escn
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("export_id", ["", ".hidden", "../escape", "a/b", "x" * 129, "spa ce", "è"])
def test_unsafe_export_id_is_refused(tmp_path: Path, export_id: str) -> None:
    with pytest.raises(ValueError, match="export_id"):
        write_export([make_row(0)], tmp_path, export_id)
    assert list(tmp_path.iterdir()) == []


def test_bad_batch_size_and_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        write_export([], tmp_path, "x", batch_size=0)
    with pytest.raises(FileNotFoundError):
        write_export([], tmp_path / "nope", "x")


# --- row validation ----------------------------------------------------------------------------------


def test_valid_row_passes() -> None:
    validate_row(make_row(0))


@pytest.mark.parametrize(
    "field",
    [
        "university",
        "pic",
        "academic_year",
        "matricola",
        "full_name",
        "esi",
        "card_type",
        "issued_at",
        "expires_at",
        "status",
        "qr_payload",
        "qr_png",
        "qr_svg",
    ],
)
@pytest.mark.parametrize("missing", [None, ""])
def test_missing_field_names_field_and_escn(field: str, missing: object) -> None:
    row = make_row(0)
    if missing == "" and field in {"qr_png", "qr_svg"}:
        missing = b""
    with pytest.raises(InvalidRowError) as info:
        validate_row(dataclasses.replace(row, **{field: missing}))
    assert isinstance(info.value, ValueError)
    assert info.value.field == field and info.value.escn == row.escn
    assert field in str(info.value) and row.escn in str(info.value)


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_missing_escn(missing: object) -> None:
    with pytest.raises(InvalidRowError, match=r"ESCN <missing>\): escn is missing"):
        validate_row(make_row(0, escn=missing))


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"escn": "../../etc/passwd"}, "escn", "not a valid ESCN"),
        ({"escn": "F7C9D400-7085-103C-8005-001999978433"}, "escn", "lower case"),
        ({"escn": "f7c9d400-7085-103c-8005-001999978433\n"}, "escn", "not a valid ESCN"),
        ({"full_name": "Anna\nRossi"}, "full_name", "control character"),
        ({"matricola": "12\x00"}, "matricola", "control character"),
        ({"full_name": "   "}, "full_name", "non-blank"),
        ({"matricola": 600001}, "matricola", "non-blank str"),
        ({"esi": "unipi.it:1234"}, "esi", "not a valid ESI"),
        ({"academic_year": "2025"}, "academic_year", "four-digit"),
        ({"academic_year": True}, "academic_year", "four-digit"),
        ({"academic_year": 25}, "academic_year", "four-digit"),
        ({"issued_at": "2025-09-01"}, "issued_at", "datetime.date"),
        ({"expires_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}, "expires_at", "datetime.date"),
        ({"expires_at": dt.date(2025, 8, 31)}, "expires_at", "before issued_at"),
        ({"qr_png": _SVG}, "qr_png", "PNG"),
        ({"qr_svg": _PNG}, "qr_svg", "SVG"),
        ({"qr_png": bytearray(_PNG)}, "qr_png", "PNG"),
    ],
)
def test_malformed_field_is_refused(changes: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(InvalidRowError, match=fragment) as info:
        validate_row(make_row(3, **changes))
    assert info.value.field == field


def test_row_of_another_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ExportRow"):
        write_export([dataclasses.asdict(make_row(0))], tmp_path, "dicts")
    assert list(tmp_path.iterdir()) == []


def test_error_message_never_carries_personal_data() -> None:
    row = make_row(0, esi="urn:schac:personalUniqueCode:int:esi:unipi.it:secret/code")
    with pytest.raises(InvalidRowError) as info:
        validate_row(row)
    assert "secret" not in str(info.value) and row.full_name not in str(info.value)


# --- verify_file -------------------------------------------------------------------------------------


def test_verify_file_detects_a_flipped_byte(tmp_path: Path) -> None:
    files = write_export([make_row(i) for i in range(3)], tmp_path, "flip")
    for f in (files.parquet, files.zip):
        assert verify_file(f.path, f.sha256)
        assert verify_file(f.path, f.sha256.upper())
        data = bytearray(f.path.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.path.write_bytes(bytes(data))
        assert not verify_file(f.path, f.sha256)


def test_verify_file_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="64 hex"):
        verify_file(path, "abc")
    with pytest.raises(ValueError, match="64 hex"):
        verify_file(path, "g" * 64)
    with pytest.raises(FileNotFoundError):
        verify_file(tmp_path / "missing", "0" * 64)


# --- schema ------------------------------------------------------------------------------------------


def test_schema_fields_and_documentation() -> None:
    assert EXPORT_SCHEMA.names == [
        "university",
        "pic",
        "academic_year",
        "matricola",
        "full_name",
        "esi",
        "escn",
        "card_type",
        "issued_at",
        "expires_at",
        "status",
        "qr_payload",
        "qr_png",
    ]
    assert str(EXPORT_SCHEMA.field("academic_year").type) == "int16"
    assert str(EXPORT_SCHEMA.field("issued_at").type) == "date32[day]"
    assert str(EXPORT_SCHEMA.field("qr_png").type) == "binary"
    assert not any(f.nullable for f in EXPORT_SCHEMA)
    described = json.loads(EXPORT_SCHEMA.metadata[b"esc_sync.field_descriptions"])
    assert list(described) == EXPORT_SCHEMA.names
    for f in EXPORT_SCHEMA:
        assert f.metadata[b"description"].decode() == described[f.name]
        assert f"| `{f.name}` |" in SCHEMA_DOC
    assert MANIFEST_SCHEMA.names == [n for n in EXPORT_SCHEMA.names if n != "qr_png"]
    assert {f.name for f in dataclasses.fields(ExportRow)} == {*EXPORT_SCHEMA.names, "qr_svg"}
