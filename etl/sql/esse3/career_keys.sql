-- The keys of one academic year's careers: compared with ours when Esse3's row count moved without a
-- newer DATA_MOD (a late insert, a deletion). Cheap: the (AA_ID, DATA_MOD) index covers it.
SELECT s."STU_ID" FROM "P01_STU" s WHERE s."AA_ID" = :aa_id
