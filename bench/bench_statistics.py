"""What esc-sync's own ANALYZE costs PostgreSQL per table (issue 25's national simulation): a step that
wrote more than ``ANALYZE_AFTER_ROWS`` rows refreshes the planner's statistics of the tables it wrote,
so a backfill pays an ANALYZE of careers, persons, badges and cards for nearly every partition.

A fresh database at the schema's head is filled with ``--careers`` careers of ``--universities``
universities over 7 academic years (synthetic rows, the proportions of the demo data: a person for
every ~2.5 careers, a badge and a card for every ~2.7), then each table is analysed ``--rounds`` times
in each variant. The baseline, measured in the same rounds: ``ANALYZE <table>``, every column on the
server's sample of 300 × default_statistics_target rows (30,000 by default), as esc-sync analysed
persons, badges and cards before. esc-sync now samples 9,000 rows (``STATISTICS_TARGET`` 30 in
etl/store/bulk.py), careers on its planner's columns only. Reported: the PostgreSQL backend's CPU an
ANALYZE, median over the rounds, and its ratio to the baseline.

    .venv/bin/python bench/bench_statistics.py [--careers 38000] [--universities 70] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
from sqlalchemy import Connection, create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etl.store.bulk import PLANNER_COLUMNS
from etl.store.migrate import upgrade
from tests.deployment import add_service_args, fresh_database

TABLES = ("careers", "persons", "badges", "cards")

# Synthetic rows: institutions uni01..uniNN, a person's careers in one of them; years 2020-2026.
FILL = {
    "careers": """
INSERT INTO careers (institution, stu_id, pers_id, person_key, matricola, academic_year, course_code,
  course_name, course_type, academic_level, status, finalised, enrolment_date, first_name, last_name,
  email, consent, source_data_mod, row_hash, source_digest, esi_written, created_at, updated_at)
SELECT 'uni' || lpad((1 + (g::bigint * 2 / 5 * 7919) % :u)::text, 2, '0'), g, g * 2 / 5,
  md5((g * 2 / 5)::text),
  (100000 + g)::text, 2020 + g % 7, 'C' || (g % 40), 'Corso di laurea in materia ' || (g % 40),
  'L', 'BACHELOR', 'A', g % 10 <> 0, DATE '2020-09-01' + (g % 2000),
  'Nome' || (g % 900), 'Cognome' || (g % 3000), 'studente' || g || '@studenti.example.it', 'S',
  TIMESTAMP '2026-01-01' + (g % 100000) * INTERVAL '1 minute', md5('h' || g), md5('d' || g),
  CASE WHEN g % 3 = 0 THEN 'urn:schac:personalUniqueCode:int:esi:it:' || md5(g::text) END,
  now(), now()
FROM generate_series(1, :n) AS g""",
    "persons": """
INSERT INTO persons (institution, esi, pers_id, person_key, state, synced_hash, first_sync_at,
  last_sync_at, created_at)
SELECT DISTINCT ON (institution, pers_id) institution, 'urn:schac:personalUniqueCode:int:esi:it:' ||
  md5(pers_id::text), pers_id, person_key, 'registered', md5('s' || pers_id), now(), now(), now()
FROM careers""",
    "badges": """
INSERT INTO badges (institution, bdg_id, stu_id, pers_id, academic_year, valid_from, valid_to,
  annulled, printed_on, kind, source_data_mod, source_digest, updated_at)
SELECT institution, stu_id, stu_id, pers_id, academic_year, DATE '2020-09-01', DATE '2027-08-31',
  stu_id % 50 = 0, CASE WHEN stu_id % 4 = 0 THEN DATE '2025-10-01' END, CASE WHEN stu_id % 4 = 0
  THEN 'F' ELSE 'V' END, source_data_mod, md5('b' || stu_id), now()
FROM careers WHERE stu_id % 11 IN (0, 3, 5, 7)""",
    "cards": """
INSERT INTO cards (escn, institution, academic_year, bdg_id, stu_id, esi, card_type, issued_at,
  expires_at, desired_status, router_status, state, synced_hash, first_sync_at, last_sync_at,
  changed_at, created_at)
SELECT substr(md5('k' || b.bdg_id), 1, 8) || '-' || substr(md5('k' || b.bdg_id), 9, 4) || '-1' ||
  substr(md5('k' || b.bdg_id), 13, 3) || '-' || substr(md5('k' || b.bdg_id), 16, 4) || '-' ||
  substr(md5('k' || b.bdg_id), 20, 12), b.institution, b.academic_year, b.bdg_id, b.stu_id, p.esi,
  'PASSIVE', DATE '2025-10-01', DATE '2027-08-31', 'ACTIVE', 'ACTIVE', 'registered',
  md5('c' || b.bdg_id), now(), now(), now(), now()
FROM badges b JOIN persons p ON p.institution = b.institution AND p.pers_id = b.pers_id""",
}


def backend_cpu(conn: Connection) -> Callable[[], float]:
    """The CPU seconds so far of the PostgreSQL backend serving ``conn`` (it runs on this machine)."""
    proc = psutil.Process(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    return lambda: sum(proc.cpu_times()[:2])


def variants(table: str) -> dict[str, list[str]]:
    """Name → the statements of one refresh; the first is the baseline."""
    out = {"every column, the server's sample": [f"ANALYZE {table}"]}
    target, what = table, "every column"
    if table in PLANNER_COLUMNS:
        target, what = f"{table} ({', '.join(PLANNER_COLUMNS[table])})", "the planner's columns"
        out[f"{what}, the server's sample"] = [f"ANALYZE {target}"]
    for statistics_target in (30, 10):
        out[f"{what}, a sample of {300 * statistics_target:,} rows"] = [
            f"SET LOCAL default_statistics_target = {statistics_target}",
            f"ANALYZE {target}",
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--careers", type=int, default=38_000)
    ap.add_argument("--universities", type=int, default=70)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=5, help="ANALYZEs a measurement")
    add_service_args(ap)
    args = ap.parse_args()
    with fresh_database(args.pg_url, "escsync_bench_stats") as url:
        engine = create_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            for table in TABLES:
                conn.execute(text(FILL[table]), {"n": args.careers, "u": args.universities})
        with engine.connect() as conn:
            rows = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in TABLES}
            cpu = backend_cpu(conn)
            conn.commit()
            print(
                f"{args.careers} careers of {args.universities} universities; rows: "
                + ", ".join(f"{t} {n}" for t, n in rows.items())
                + f"; medians of {args.rounds} rounds, the PostgreSQL backend's CPU; {os.cpu_count()} CPUs"
            )
            for table in TABLES:
                named = variants(table)
                spent: dict[str, list[float]] = {name: [] for name in named}
                for _ in range(args.rounds):  # the variants alternate within each round
                    for name, statements in named.items():
                        before = cpu()
                        for _ in range(args.repeat):  # the backend's CPU is counted in 10 ms ticks
                            with conn.begin():
                                for sql in statements:
                                    conn.exec_driver_sql(sql)
                        spent[name].append((cpu() - before) / args.repeat)
                base = statistics.median(next(iter(spent.values())))
                for name, values in spent.items():
                    ms = statistics.median(values) * 1000
                    ratio = f"x{ms / 1000 / base:5.2f}" if base else "(below the 10 ms the CPU is counted in)"
                    print(f"  {table:8} {name:64} {ms:7.1f} ms  {ratio}")
        engine.dispose()


if __name__ == "__main__":
    main()
