-- Store the ESI on the career (the field the Esse3 REST API exposes as codiceEsi). Idempotent, and
-- never overwrites a different ESI already there (that career is quarantined instead), except the one
-- esc-sync wrote itself before (the previous one): the career changed person (a person merge), and the ESI it
-- carries now is the new person's.
UPDATE "P01_STU" SET "CODICE_ESI" = :esi
WHERE "STU_ID" = :stu_id AND ("CODICE_ESI" IS NULL OR "CODICE_ESI" = :esi OR "CODICE_ESI" = :previous)
