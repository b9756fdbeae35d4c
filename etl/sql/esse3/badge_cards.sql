-- The card each badge carries after a write-back: a badge that does not carry its ESCN was not
-- written (another ESCN was there, or the badge is gone) and is quarantined.
SELECT "BDG_ID", "ESC_ESCN", "ESC_STATO" FROM "P01_BADGE" WHERE "BDG_ID" IN :bdg_ids
