-- Per academic year, the newest DATA_MOD of each source table that feeds a career, and the row counts
-- of careers and badges: what the sensor compares with our watermarks. A count that moved without a
-- newer DATA_MOD is a row committed late under an old DATA_MOD, or a deletion. One cheap aggregate per
-- table (indexes on AA_ID, DATA_MOD).
-- The cutoff is now plus the allowed clock skew: a row dated in the future (say 2100) is quarantined when
-- read, and must not make its academic year look changed forever (it is still counted).
SELECT s."AA_ID" AS "AA_ID", 'P01_STU' AS "SOURCE_TABLE",
       MAX(CASE WHEN s."DATA_MOD" <= :cutoff THEN s."DATA_MOD" END) AS "MAX_DATA_MOD", COUNT(*) AS "ROWS"
FROM "P01_STU" s GROUP BY s."AA_ID"
UNION ALL
SELECT s."AA_ID", 'P01_BADGE', MAX(CASE WHEN b."DATA_MOD" <= :cutoff THEN b."DATA_MOD" END), COUNT(*)
FROM "P01_STU" s JOIN "P01_BADGE" b ON b."STU_ID" = s."STU_ID" GROUP BY s."AA_ID"
UNION ALL
SELECT s."AA_ID", 'P01_ANAPER', MAX(p."DATA_MOD"), NULL
FROM "P01_STU" s JOIN "P01_ANAPER" p ON p."PERS_ID" = s."PERS_ID"
WHERE p."DATA_MOD" <= :cutoff GROUP BY s."AA_ID"
UNION ALL
SELECT s."AA_ID", 'P06_CDS', MAX(c."DATA_MOD"), NULL
FROM "P01_STU" s JOIN "P06_CDS" c ON c."CDS_ID" = s."CDS_ID"
WHERE c."DATA_MOD" <= :cutoff GROUP BY s."AA_ID"
