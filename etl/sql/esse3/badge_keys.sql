-- The keys of the badges of one academic year's careers (see career_keys.sql).
SELECT b."BDG_ID" FROM "P01_BADGE" b JOIN "P01_STU" s ON s."STU_ID" = b."STU_ID" WHERE s."AA_ID" = :aa_id
