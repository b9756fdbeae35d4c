-- Every career of one academic year, whatever its DATA_MOD: the source sweep compares them all with
-- the state DB (a late commit can carry a DATA_MOD older than the watermark). Same columns as
-- careers_changed.sql (sites adapt both alike).
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
ORDER BY s."STU_ID"
