-- Badges of the careers of one academic year changed since the watermark (the badge belongs to its
-- career's partition). Quoted upper-case identifiers: the same text on Oracle, PostgreSQL, SQLite.
SELECT b."BDG_ID", b."STU_ID", b."PERS_ID", b."DATA_INI", b."DATA_FIN", b."ANN_FLG", b."DATA_STAMPA",
       b."TIPO", b."DATA_MOD"
FROM "P01_BADGE" b
JOIN "P01_STU" s ON s."STU_ID" = b."STU_ID"
WHERE s."AA_ID" = :aa_id AND b."DATA_MOD" > :since
ORDER BY b."BDG_ID"
