-- Where badges gone from their partition are now: the academic year of their career (NULL: the career
-- is gone); a badge found nowhere was deleted.
SELECT b."BDG_ID", s."AA_ID" FROM "P01_BADGE" b LEFT JOIN "P01_STU" s ON s."STU_ID" = b."STU_ID"
WHERE b."BDG_ID" IN :bdg_ids
