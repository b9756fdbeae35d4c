-- Where careers gone from their partition are now: a career found in another academic year moved
-- there (its cards follow it); one found nowhere was deleted.
SELECT s."STU_ID", s."AA_ID" FROM "P01_STU" s WHERE s."STU_ID" IN :stu_ids
