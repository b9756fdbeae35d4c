-- The same careers, by key: re-reads quarantined rows every run, so a fix that did not move
-- DATA_MOD (or an enrolment date that is no longer in the future) clears the quarantine.
SELECT s."STU_ID", s."PERS_ID", s."MATRICOLA", s."CDS_ID", s."AA_ID", s."DATA_IMM",
       s."STA_STU_COD", s."MOT_STASTU_COD", s."DATA_CHIUSURA", s."CODICE_ESI",
       s."DATA_MOD" AS "STU_DATA_MOD",
       p."PERS_ID" AS "ANAPER_PERS_ID", p."COGNOME", p."NOME", p."EMAIL", p."EMAIL_ATE",
       p."CONSENSO_ESC", p."DATA_MOD" AS "ANAPER_DATA_MOD",
       c."COD" AS "CDS_COD", c."DES" AS "CDS_DES", c."TIPO_CORSO_COD", c."DATA_MOD" AS "CDS_DATA_MOD"
FROM "P01_STU" s
LEFT JOIN "P01_ANAPER" p ON p."PERS_ID" = s."PERS_ID"
LEFT JOIN "P06_CDS" c ON c."CDS_ID" = s."CDS_ID"
WHERE s."AA_ID" = :aa_id AND s."STU_ID" IN :stu_ids
ORDER BY s."STU_ID"
