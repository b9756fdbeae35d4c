"""The Esse3 tables esc-sync reads, as SQLAlchemy Core tables, used to create the demo Esse3 database.

Column names follow Esse3 (Oracle, upper case). Production never creates these: the reader in
``etl.resources.esse3`` only runs the SQL of ``etl/sql/esse3/`` against them.
"""

from __future__ import annotations

from sqlalchemy import Column, Date, DateTime, Index, Integer, LargeBinary, MetaData, String, Table

metadata = MetaData()

P01_ANAPER = Table(
    "P01_ANAPER",
    metadata,
    Column("PERS_ID", Integer, primary_key=True, autoincrement=False),
    Column("COGNOME", String(100)),
    Column("NOME", String(100)),
    Column("COD_FIS", String(16)),
    Column("DATA_NASCITA", Date),
    Column("EMAIL", String(255)),
    Column("EMAIL_ATE", String(255)),
    # Site-specific: where an opt-in university records the student's ESC consent ('S' yes, 'N' no).
    Column("CONSENSO_ESC", String(1)),
    Column("DATA_MOD", DateTime, nullable=False),
    Index("IX_P01_ANAPER_DATA_MOD", "DATA_MOD"),
)

P06_CDS = Table(
    "P06_CDS",
    metadata,
    Column("CDS_ID", Integer, primary_key=True, autoincrement=False),
    Column("COD", String(20), nullable=False),
    Column("DES", String(255), nullable=False),
    Column("TIPO_CORSO_COD", String(10), nullable=False),
    Column("DATA_MOD", DateTime, nullable=False),
)

P01_STU = Table(
    "P01_STU",
    metadata,
    Column("STU_ID", Integer, primary_key=True, autoincrement=False),
    Column("PERS_ID", Integer, nullable=False),
    Column("MATRICOLA", String(20)),
    Column("CDS_ID", Integer),
    Column("AA_ID", Integer, nullable=False),
    Column("DATA_IMM", Date),
    Column("STA_STU_COD", String(2), nullable=False),
    Column("MOT_STASTU_COD", String(10)),
    Column("DATA_CHIUSURA", Date),
    Column("CODICE_ESI", String(255)),
    Column("DATA_MOD", DateTime, nullable=False),
    Index("IX_P01_STU_AA_DATA_MOD", "AA_ID", "DATA_MOD"),
    Index("IX_P01_STU_PERS_ID", "PERS_ID"),
)

P01_BADGE = Table(
    "P01_BADGE",
    metadata,
    Column("BDG_ID", Integer, primary_key=True, autoincrement=False),
    Column("STU_ID", Integer, nullable=False),
    Column("PERS_ID", Integer, nullable=False),
    Column("DATA_INI", Date, nullable=False),
    Column("DATA_FIN", Date, nullable=False),
    Column("ANN_FLG", Integer, nullable=False, default=0),  # 1 = annulled
    Column("DATA_STAMPA", Date),  # printed on
    Column("TIPO", String(1), nullable=False),  # 'V' virtual, 'F' physical (printed)
    Column("DATA_MOD", DateTime, nullable=False),
    # Written by esc-sync (docs/esse3-badge-write-back.md): the card on the badge.
    Column("ESC_ESCN", String(36)),
    Column("ESC_QR_URL", String(255)),
    Column("ESC_STATO", String(16)),
    Column("ESC_QR_PNG", LargeBinary),
    Index("IX_P01_BADGE_STU_ID", "STU_ID"),
    Index("IX_P01_BADGE_DATA_MOD", "DATA_MOD"),
)
