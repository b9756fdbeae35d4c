-- Every badge of the careers of one academic year, whatever its DATA_MOD: the source sweep compares
-- them all with the state DB. Same columns as badges_changed.sql.
SELECT b."BDG_ID", b."STU_ID", b."PERS_ID", b."DATA_INI", b."DATA_FIN", b."ANN_FLG", b."DATA_STAMPA",
       b."TIPO", b."DATA_MOD"
FROM "P01_BADGE" b
JOIN "P01_STU" s ON s."STU_ID" = b."STU_ID"
WHERE s."AA_ID" = :aa_id
ORDER BY b."BDG_ID"
