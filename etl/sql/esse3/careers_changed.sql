-- Careers of one academic year changed since the per-table watermarks, joined with the person and
-- the course. Identifiers are quoted upper case: the same text runs on Oracle, PostgreSQL and SQLite.
-- LEFT JOINs keep careers whose person or course is missing so they are quarantined, not lost.
-- Sites that record ESC consent elsewhere replace "CONSENSO_ESC" with their own expression.
SELECT s."STU_ID", s."PERS_ID", s."MATRICOLA", s."CDS_ID", s."AA_ID", s."DATA_IMM",
       s."STA_STU_COD", s."MOT_STASTU_COD", s."DATA_CHIUSURA", s."CODICE_ESI",
       s."DATA_MOD" AS "STU_DATA_MOD",
       p."PERS_ID" AS "ANAPER_PERS_ID", p."COGNOME", p."NOME", p."EMAIL", p."EMAIL_ATE",
       p."CONSENSO_ESC", p."DATA_MOD" AS "ANAPER_DATA_MOD",
       c."COD" AS "CDS_COD", c."DES" AS "CDS_DES", c."TIPO_CORSO_COD", c."DATA_MOD" AS "CDS_DATA_MOD"
FROM "P01_STU" s
LEFT JOIN "P01_ANAPER" p ON p."PERS_ID" = s."PERS_ID"
LEFT JOIN "P06_CDS" c ON c."CDS_ID" = s."CDS_ID"
WHERE s."AA_ID" = :aa_id
  AND (s."DATA_MOD" > :since_stu OR p."DATA_MOD" > :since_anaper OR c."DATA_MOD" > :since_cds)
ORDER BY s."STU_ID"
