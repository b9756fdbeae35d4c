-- Erasure (`esc-sync erase --esse3`): take back the ESI esc-sync wrote on a career, only if the career
-- still carries exactly that one (an ESI someone else wrote there is the university's).
UPDATE "P01_STU" SET "CODICE_ESI" = NULL WHERE "STU_ID" = :stu_id AND "CODICE_ESI" = :esi
