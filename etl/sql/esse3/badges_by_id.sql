-- Badges of one academic year by key: re-reads the rows a sweep or a key comparison named (a late
-- insert, a late update), whatever their DATA_MOD. Same columns as badges_changed.sql.
SELECT b."BDG_ID", b."STU_ID", b."PERS_ID", b."DATA_INI", b."DATA_FIN", b."ANN_FLG", b."DATA_STAMPA",
       b."TIPO", b."DATA_MOD"
FROM "P01_BADGE" b
JOIN "P01_STU" s ON s."STU_ID" = b."STU_ID"
WHERE s."AA_ID" = :aa_id AND b."BDG_ID" IN :bdg_ids
ORDER BY b."BDG_ID"
