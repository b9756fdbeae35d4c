-- Per academic year, the newest DATA_MOD of each source table that feeds a career: what the sensor
-- compares with our watermarks. One cheap aggregate per table (indexes on DATA_MOD / AA_ID).
-- The cutoff is now plus the allowed clock skew: a row dated in the future (say 2100) is quarantined when
-- read, and must not make its academic year look changed forever.
SELECT s."AA_ID" AS "AA_ID", 'P01_STU' AS "SOURCE_TABLE", MAX(s."DATA_MOD") AS "MAX_DATA_MOD"
FROM "P01_STU" s WHERE s."DATA_MOD" <= :cutoff GROUP BY s."AA_ID"
UNION ALL
SELECT s."AA_ID", 'P01_ANAPER', MAX(p."DATA_MOD")
FROM "P01_STU" s JOIN "P01_ANAPER" p ON p."PERS_ID" = s."PERS_ID"
WHERE p."DATA_MOD" <= :cutoff GROUP BY s."AA_ID"
UNION ALL
SELECT s."AA_ID", 'P06_CDS', MAX(c."DATA_MOD")
FROM "P01_STU" s JOIN "P06_CDS" c ON c."CDS_ID" = s."CDS_ID"
WHERE c."DATA_MOD" <= :cutoff GROUP BY s."AA_ID"
UNION ALL
SELECT s."AA_ID", 'P01_BADGE', MAX(b."DATA_MOD")
FROM "P01_STU" s JOIN "P01_BADGE" b ON b."STU_ID" = s."STU_ID"
WHERE b."DATA_MOD" <= :cutoff GROUP BY s."AA_ID"
