-- Erasure (`esc-sync erase --esse3`): take back the card esc-sync wrote on a badge (write_back_badge.sql),
-- only if the badge still carries that ESCN. A site adapts the column names as in write_back_badge.sql.
UPDATE "P01_BADGE" SET "ESC_ESCN" = NULL, "ESC_QR_URL" = NULL, "ESC_STATO" = NULL
WHERE "BDG_ID" = :bdg_id AND "ESC_ESCN" = :escn
